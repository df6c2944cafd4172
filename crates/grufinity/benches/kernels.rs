//! Kernel benchmarks on the CPU backend: `cargo bench -p grufinity --bench kernels`.
//!
//! - the minGRU recurrence, forward and forward+backward, fused CPU kernel and log-space scan,
//!   at (B=16, T=256, D=384) and (B=1, T=4096, D=384);
//! - one training step of the reference model (dim 256, depth 4, expansion 1.5, ff_mult 4,
//!   vocab 256, batch 16, chunk 256): forward, backward, AdamW update;
//! - one decoding step (one token, one stream) of the comparison's three models (dim 128,
//!   depth 4; dim 256, depth 4; dim 512, depth 6): Burn's forward, and the host step with f32
//!   bf16 and int8 weights;
//! - the matrix products of a dim-512 block at batch 16, chunk 256 (4096 rows), in f32 (`gemm`)
//!   and with bfloat16 operands (each of the AVX512-BF16 and AMX kernels the CPU has);
//! - that block's GELU feed-forward (512 -> 2048 -> 512), forward and backward, with f32 and
//!   (where the CPU has them) bfloat16 products.

use std::hint::black_box;

use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use grufinity::model::scan::{log_coeffs_and_values, scan_log, LOG_ZERO};
use grufinity::model::host::{HostModel, HostState};
use grufinity::model::quant::WeightDtype;
use grufinity::model::{fused, MinGruLm, ModelConfig, State};
use grufinity::train::optim::{accumulate_grads, clip_global_norm, AdamW, AdamWConfig, GradMap};

fn inputs(b: usize, t: usize, e: usize, device: &Device) -> (Tensor<3>, Tensor<3>) {
    (
        Tensor::random([b, t, e], Distribution::Normal(0.0, 1.0), device),
        Tensor::random([b, t, e], Distribution::Normal(0.0, 1.0), device),
    )
}

fn scan(c: &mut Criterion) {
    grufinity::alloc::keep_freed_memory();
    let cpu = Device::flex();
    let ad = cpu.clone().autodiff();
    let e = 576; // inner width of D = 384 at expansion 1.5
    for (b, t) in [(16usize, 256usize), (1, 4096)] {
        let mut group = c.benchmark_group(format!("scan B={b} T={t} D=384"));
        group.throughput(Throughput::Elements((b * t) as u64));
        group.sample_size(10);
        let (kh, kz) = inputs(b, t, e, &cpu);
        let h0 = Tensor::<3>::zeros([b, 1, e], &cpu);
        let hz = Tensor::cat(vec![kh.clone(), kz.clone()], 2);
        group.bench_function("fused forward", |bench| {
            bench.iter(|| black_box(fused::recurrence(hz.clone(), h0.clone()).into_data()))
        });
        group.bench_function("log-space forward", |bench| {
            bench.iter(|| {
                let (lc, lv) = log_coeffs_and_values(kh.clone(), kz.clone());
                black_box(scan_log(lc, lv, h0.clone().log().clamp_min(LOG_ZERO)).into_data())
            })
        });
        let (kh, kz) = (kh.clone().autodiff().require_grad(), kz.clone().autodiff().require_grad());
        let hz = hz.autodiff().require_grad();
        let h0 = Tensor::<3>::zeros([b, 1, e], &ad);
        group.bench_function("fused forward+backward", |bench| {
            bench.iter(|| black_box(fused::recurrence(hz.clone(), h0.clone()).sum().backward()))
        });
        group.bench_function("log-space forward+backward", |bench| {
            bench.iter(|| {
                let (lc, lv) = log_coeffs_and_values(kh.clone(), kz.clone());
                black_box(scan_log(lc, lv, h0.clone().clamp_min(LOG_ZERO)).exp().sum().backward())
            })
        });
        group.finish();
    }
}

fn train_step(c: &mut Criterion) {
    grufinity::alloc::keep_freed_memory();
    let ad = Device::flex().autodiff();
    let cfg = ModelConfig::default();
    let (b, t) = (16, 256);
    let mut model = MinGruLm::new(&cfg, 0, &ad).expect("valid config");
    let mut opt = AdamW::new(AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 });
    let ids: Vec<i64> = (0..b * t).map(|i| ((i * 31 + 7) % 256) as i64).collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), &ad);
    let mut group = c.benchmark_group("train step dim256 depth4 B=16 T=256");
    group.throughput(Throughput::Elements((b * t) as u64));
    group.sample_size(10);
    group.bench_function("forward+backward+adamw", |bench| {
        bench.iter(|| {
            let (loss, _) = model.loss(tokens.clone(), tokens.clone(), State::zeros(&cfg, b, &ad));
            let grads = loss.backward();
            let mut acc = GradMap::new();
            accumulate_grads(&model, &grads, 1.0, &mut acc);
            clip_global_norm(&mut acc, 1.0);
            model = opt.update(model.clone(), &acc, 1e-3);
        })
    });
    group.finish();
}

fn decode_step(c: &mut Criterion) {
    grufinity::alloc::keep_freed_memory();
    let cpu = Device::flex();
    for (dim, depth) in [(128, 4), (256, 4), (512, 6)] {
        let cfg = ModelConfig { dim, depth, ..Default::default() };
        let model = MinGruLm::new(&cfg, 0, &cpu).expect("valid config");
        let mut group = c.benchmark_group(format!("decode step dim{dim} depth{depth}"));
        group.throughput(Throughput::Elements(1));
        group.bench_function("burn forward", |bench| {
            let mut state = State::zeros(&cfg, 1, &cpu);
            bench.iter(|| {
                let token = Tensor::<2, Int>::from_data(TensorData::new(vec![65i64], [1, 1]), &cpu);
                let (logits, next) = model.forward(token, state.clone());
                state = next;
                black_box(logits.into_data())
            })
        });
        for dtype in [WeightDtype::F32, WeightDtype::Bf16, WeightDtype::Int8] {
            let host = HostModel::new(&model, dtype);
            let mut state = HostState::from_state(&State::zeros(&cfg, 1, &cpu));
            group.bench_function(format!("host {dtype:?}"), |bench| {
                bench.iter(|| black_box(host.step(&[65], &mut state)))
            });
        }
        group.finish();
    }
}

fn matmul(c: &mut Criterion) {
    use grufinity::model::dense::matmul;
    use grufinity::model::gemm_bf16::{gemm, Kernel, View};
    let cpu = Device::flex();
    let mut group = c.benchmark_group("matmul");
    // (m, k, n, A transposed, B transposed): the forward products of a dim-512 block at 4096
    // rows, the weight gradient of its first one (`x^T g`, `x` read through a transposed view)
    // and its input gradient (`g W^T`).
    for (m, k, n, a_t, b_t) in [
        (4096, 512, 1536, false, false),
        (4096, 512, 2048, false, false),
        (4096, 2048, 512, false, false),
        (512, 4096, 1536, true, false),
        (4096, 1536, 512, false, true),
    ] {
        let a_data = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &cpu).into_data().try_into_vec::<f32>().unwrap();
        let b_data = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &cpu).into_data().try_into_vec::<f32>().unwrap();
        let (a, a_view) = if a_t {
            (Tensor::<2>::from_data(TensorData::new(a_data.clone(), [k, m]), &cpu).transpose(), View { ptr: a_data.as_ptr(), rs: 1, cs: m as isize })
        } else {
            (Tensor::<2>::from_data(TensorData::new(a_data.clone(), [m, k]), &cpu), View { ptr: a_data.as_ptr(), rs: k as isize, cs: 1 })
        };
        let (b, b_view) = if b_t {
            (Tensor::<2>::from_data(TensorData::new(b_data.clone(), [n, k]), &cpu).transpose(), View { ptr: b_data.as_ptr(), rs: 1, cs: k as isize })
        } else {
            (Tensor::<2>::from_data(TensorData::new(b_data.clone(), [k, n]), &cpu), View { ptr: b_data.as_ptr(), rs: n as isize, cs: 1 })
        };
        let name = format!("{m}x{k}{}x{n}{}", if a_t { "(T)" } else { "" }, if b_t { "(T)" } else { "" });
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        group.bench_function(format!("{name} f32"), |bench| bench.iter(|| black_box(matmul(a.clone(), b.clone()))));
        for kernel in Kernel::all_here().into_iter().filter(|&kernel| kernel != Kernel::Portable) {
            group.bench_function(format!("{name} bf16 {}", kernel.name()), |bench| {
                // SAFETY: the views describe `a_data` and `b_data`, alive for the benchmark.
                bench.iter(|| black_box(unsafe { gemm(m, n, k, a_view, b_view, None, kernel, true) }))
            });
        }
    }
    group.finish();
}

fn feed_forward(c: &mut Criterion) {
    use grufinity::model::block::FeedForward;
    use grufinity::model::dense::Bf16Products;
    use grufinity::model::init::Init;
    use grufinity::model::FeedForwardKind;
    grufinity::alloc::keep_freed_memory();
    let ad = Device::flex().autodiff();
    let ff = FeedForward::new(512, 2048, FeedForwardKind::Gelu, &mut Init::new(0, &ad));
    let x = Tensor::<3>::random([16, 256, 512], Distribution::Normal(0.0, 1.0), &ad).require_grad();
    let mut group = c.benchmark_group("feed-forward 512-2048-512, 4096 rows");
    group.throughput(Throughput::Elements(4096));
    group.sample_size(20);
    for bf16 in [false, true] {
        let _products = if bf16 { Bf16Products::enable() } else { None };
        if bf16 && _products.is_none() {
            continue;
        }
        group.bench_function(format!("forward+backward {}", if bf16 { "bf16" } else { "f32" }), |bench| {
            bench.iter(|| black_box(ff.forward(x.clone()).sum().backward()))
        });
    }
    group.finish();
}

criterion_group!(benches, scan, train_step, decode_step, matmul, feed_forward);
criterion_main!(benches);
