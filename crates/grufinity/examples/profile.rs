//! Rough timing of the pieces of a training step (not a benchmark: see benches/).
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use grufinity::model::dense;
use grufinity::model::{MinGruLm, ModelConfig, State};
use grufinity::train::eval::token_tensor;

fn time<F: FnMut()>(name: &str, n: usize, mut f: F) {
    f();
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    println!("{name:40} {:8.2} ms", t.elapsed().as_secs_f64() * 1e3 / n as f64);
}

fn main() {
    grufinity::alloc::keep_freed_memory();
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let (b, t) = (16, 128);
    if std::env::args().nth(1).as_deref() == Some("model") {
        return model_only(&device, &ad, b, t);
    }
    if std::env::args().nth(1).as_deref() == Some("step") {
        return train_steps(&ad);
    }
    // Forward+backward of each piece of a reference block at batch 16, chunk 256.
    let (b, t, d, e, h) = (16, 256, 256, 384, 1024);
    let x = Tensor::<3>::random([b, t, d], Distribution::Normal(0.0, 1.0), &ad).require_grad();
    let norm = burn::nn::RmsNormConfig::new(d).init(&ad);
    time("rmsnorm [16,256,256] (burn)", 5, || {
        let _ = norm.forward(x.clone()).sum().backward();
    });
    time("rmsnorm [16,256,256] (fused)", 5, || {
        let _ = grufinity::model::fused_norm::rms_norm(&norm, x.clone()).sum().backward();
    });
    let w_hz = Tensor::<2>::random([d, 2 * e], Distribution::Normal(0.0, 0.05), &ad).require_grad();
    time("linear 256->768", 5, || {
        let _ = dense::rows_times(x.clone(), w_hz.clone()).sum().backward();
    });
    let hz = Tensor::<3>::random([b, t, 2 * e], Distribution::Normal(0.0, 1.0), &ad).require_grad();
    let h0 = Tensor::<3>::zeros([b, 1, e], &ad);
    time("fused recurrence E=384", 5, || {
        let _ = grufinity::model::fused::recurrence(hz.clone(), h0.clone()).sum().backward();
    });
    let ff = grufinity::model::block::FeedForward::new(
        d,
        h,
        grufinity::model::FeedForwardKind::Gelu,
        &mut grufinity::model::init::Init::new(0, &ad),
    );
    time("fused GELU feed-forward 256->1024->256", 5, || {
        let _ = ff.forward(x.clone()).sum().backward();
    });
    time("residual add [16,256,256]", 5, || {
        let _ = (x.clone() + x.clone()).sum().backward();
    });
    let logits = Tensor::<3>::random([b, t, 256], Distribution::Normal(0.0, 1.0), &ad).require_grad();
    let tokens_t: Vec<u32> = (0..b * t).map(|i| (i * 7 % 256) as u32).collect();
    time("cross-entropy [16,256,256]", 5, || {
        let _ = grufinity::model::cross_entropy(logits.clone(), token_tensor(&tokens_t, b, t, &ad)).backward();
    });
    model_only(&device, &ad, b, t);
}

fn model_only(device: &Device, ad: &Device, b: usize, t: usize) {
    let (device, ad) = (device.clone(), ad.clone());
    // `profile model N DIM DEPTH CHUNK`: N timed steps of that model at batch 16.
    let arg = |i: usize, default: usize| std::env::args().nth(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (dim, depth, t) = (arg(3, 128), arg(4, 3), arg(5, t));
    let cfg = ModelConfig { dim, depth, ..Default::default() };
    let model = MinGruLm::new(&cfg, 0, &ad).unwrap();
    let tokens: Vec<u32> = (0..b * t).map(|i| (i * 7 % 256) as u32).collect();
    time("model fwd (no grad)", 3, || {
        let m = burn::module::Module::valid(&model);
        let (l, _) = m.loss(token_tensor(&tokens, b, t, &device), token_tensor(&tokens, b, t, &device), State::zeros(&cfg, b, &device));
        let _ = l.into_scalar::<f32>();
    });
    let n = arg(2, 3);
    time("model fwd+bwd", n, || {
        let (l, _) = model.loss(token_tensor(&tokens, b, t, &ad), token_tensor(&tokens, b, t, &ad), State::zeros(&cfg, b, &ad));
        let _ = l.backward();
    });
}

/// `profile step N DIM DEPTH CHUNK`: N whole training steps at batch 16 (forward, backward,
/// gradient norm and clipping, AdamW, the finiteness check), with the fused and the tensor-op
/// optimiser.
fn train_steps(ad: &Device) {
    use grufinity::train::optim::{accumulate_grads, clip_global_norm, params_finite, AdamW, AdamWConfig, GradMap};
    let arg = |i: usize, default: usize| std::env::args().nth(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (n, dim, depth, t, b) = (arg(2, 3), arg(3, 256), arg(4, 4), arg(5, 256), 16);
    let cfg = ModelConfig { dim, depth, ..Default::default() };
    let tokens: Vec<u32> = (0..b * t).map(|i| (i * 7 % 256) as u32).collect();
    for fused in [false, true, false, true] {
        let mut model = MinGruLm::new(&cfg, 0, ad).unwrap();
        let mut opt = AdamW::new(AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 });
        opt.fused = fused;
        time(&format!("train step (fused optimiser: {fused})"), n, || {
            let (l, _) = model.loss(token_tensor(&tokens, b, t, ad), token_tensor(&tokens, b, t, ad), State::zeros(&cfg, b, ad));
            let grads = l.backward();
            let mut acc = GradMap::new();
            accumulate_grads(&model, &grads, 1.0, &mut acc);
            clip_global_norm(&mut acc, 1.0);
            model = opt.update(model.clone(), &acc, 1e-3);
            assert!(params_finite(&model));
        });
    }
}
