//! Rough timing of the pieces of a training step (not a benchmark: see benches/).
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use grufinity::model::scan::{log_coeffs_and_values, scan_log, LOG_ZERO};
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
    let (b, t, e) = (16, 128, 192);
    if std::env::args().nth(1).as_deref() == Some("model") {
        return model_only(&device, &ad, b, t);
    }
    let a = Tensor::<2>::random([512, 512], Distribution::Default, &device);
    time("matmul 512^3", 10, || { let _ = a.clone().matmul(a.clone()).into_data(); });
    let kh = Tensor::<3>::random([b, t, e], Distribution::Normal(0.0, 1.0), &ad).require_grad();
    let kz = Tensor::<3>::random([b, t, e], Distribution::Normal(0.0, 1.0), &ad).require_grad();
    let h0 = Tensor::<3>::full([b, 1, e], LOG_ZERO, &ad);
    let plain_kh = kh.clone().inner();
    let plain_kz = kz.clone().inner();
    time("coeffs fwd (no autodiff)", 5, || {
        let (lc, _lv) = log_coeffs_and_values(plain_kh.clone(), plain_kz.clone());
        let _ = lc.sum().into_scalar::<f32>();
    });
    let (plc, plv) = log_coeffs_and_values(plain_kh.clone(), plain_kz.clone());
    let ph0 = h0.clone().inner();
    time("scan_log only (no autodiff)", 5, || {
        let _ = scan_log(plc.clone(), plv.clone(), ph0.clone()).sum().into_scalar::<f32>();
    });
    time("add x1 (no autodiff)", 20, || {
        let _ = (plc.clone() + plv.clone()).sum().into_scalar::<f32>();
    });
    time("narrow+add x1 (no autodiff)", 20, || {
        let _ = (plc.clone().narrow(1, 0, 120) + plv.clone().narrow(1, 8, 120)).sum().into_scalar::<f32>();
    });
    time("cat x1 (no autodiff)", 20, || {
        let _ = Tensor::cat(vec![plc.clone().narrow(1, 0, 8), plv.clone().narrow(1, 8, 120)], 1).sum().into_scalar::<f32>();
    });
    time("log_sigmoid x1 (no autodiff)", 20, || {
        let _ = burn::tensor::activation::log_sigmoid(plc.clone()).sum().into_scalar::<f32>();
    });
    time("own log_sigmoid x1 (no autodiff)", 20, || {
        let _ = grufinity::model::scan::log_sigmoid(plc.clone()).sum().into_scalar::<f32>();
    });
    time("exp x1 (no autodiff)", 20, || {
        let _ = plc.clone().exp().sum().into_scalar::<f32>();
    });
    time("sum only", 20, || {
        let _ = plc.clone().sum().into_scalar::<f32>();
    });
    time("scan fwd", 5, || {
        let (lc, lv) = log_coeffs_and_values(kh.clone(), kz.clone());
        let _ = scan_log(lc, lv, h0.clone()).sum().into_scalar::<f32>();
    });
    time("scan fwd+bwd", 5, || {
        let (lc, lv) = log_coeffs_and_values(kh.clone(), kz.clone());
        let y = scan_log(lc, lv, h0.clone()).exp().sum();
        let _ = y.backward();
    });
    let x = Tensor::<3>::random([b, t, 128], Distribution::Normal(0.0, 1.0), &ad).require_grad();
    let w = Tensor::<2>::random([128, 512], Distribution::Normal(0.0, 1.0), &ad).require_grad();
    time("linear 128->512 fwd+bwd", 5, || {
        let y = x.clone().matmul(w.clone().unsqueeze::<3>()).sum();
        let _ = y.backward();
    });
    let big = Tensor::<3>::random([b, t, 512], Distribution::Normal(0.0, 1.0), &ad).require_grad();
    time("gelu fwd+bwd [16,128,512]", 5, || {
        let _ = burn::tensor::activation::gelu(big.clone()).sum().backward();
    });
    time("fused gelu fwd+bwd [16,128,512]", 5, || {
        let _ = grufinity::model::fused::gelu(big.clone()).sum().backward();
    });
    let norm = burn::nn::RmsNormConfig::new(128).init(&ad);
    time("rmsnorm fwd+bwd [16,128,128]", 5, || {
        let _ = norm.forward(x.clone()).sum().backward();
    });
    let logits = Tensor::<3>::random([b, t, 256], Distribution::Normal(0.0, 1.0), &ad).require_grad();
    let tokens_t: Vec<u32> = (0..b * t).map(|i| (i * 7 % 256) as u32).collect();
    time("cross-entropy fwd+bwd [16,128,256]", 5, || {
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
