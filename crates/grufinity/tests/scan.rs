//! The log-space scan against a plain sequential recurrence in f64.

mod common;

use common::{cpu, max_abs_diff, tensor, to_vec, Rng};
use grufinity::model::scan::{log_coeffs_and_values, scan_log, step_log, LOG_ZERO};
use burn::tensor::Tensor;

fn g(x: f64) -> f64 {
    if x >= 0.0 { x + 0.5 } else { 1.0 / (1.0 + (-x).exp()) }
}
fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `h_t = (1 - z_t) h_{t-1} + z_t g(k_h)`, row-major `[B, T, E]`, returns all `h`.
fn reference(k_h: &[f64], k_z: &[f64], h0: &[f64], b: usize, t: usize, e: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; b * t * e];
    for bi in 0..b {
        for ei in 0..e {
            let mut h = h0[bi * e + ei];
            for ti in 0..t {
                let i = (bi * t + ti) * e + ei;
                let z = sigmoid(k_z[i]);
                h = (1.0 - z) * h + z * g(k_h[i]);
                out[i] = h as f32;
            }
        }
    }
    out
}

fn run_scan(k_h: &[f64], k_z: &[f64], h0: &[f64], b: usize, t: usize, e: usize) -> (Vec<f32>, Vec<f32>) {
    let device = cpu();
    let kh = tensor(k_h, [b, t, e], &device);
    let kz = tensor(k_z, [b, t, e], &device);
    let log_h0 = tensor(h0, [b, 1, e], &device).log().clamp_min(LOG_ZERO);
    let (lc, lv) = log_coeffs_and_values(kh, kz);
    let log_h = scan_log(lc, lv, log_h0);
    let last = log_h.clone().narrow(1, t - 1, 1);
    (to_vec(log_h.exp()), to_vec(last.exp()))
}

#[test]
fn scan_matches_sequential_recurrence() {
    let (b, e) = (2, 16);
    for &t in &[1usize, 7, 256, 2048] {
        let mut rng = Rng(t as u64);
        let k_h = rng.normals(b * t * e, 2.0);
        let k_z = rng.normals(b * t * e, 2.0);
        let h0: Vec<f64> = (0..b * e).map(|_| rng.uniform() * 2.0).collect();
        let (got, last) = run_scan(&k_h, &k_z, &h0, b, t, e);
        let want = reference(&k_h, &k_z, &h0, b, t, e);
        let err = max_abs_diff(&got, &want);
        assert!(err <= 1e-4, "T={t}: max abs error {err}");
        let want_last: Vec<f32> = (0..b)
            .flat_map(|bi| want[(bi * t + t - 1) * e..(bi * t + t) * e].to_vec())
            .collect();
        assert!(max_abs_diff(&last, &want_last) <= 1e-4);
    }
}

#[test]
fn scan_from_zero_state_matches_reference() {
    let (b, t, e) = (3, 100, 8);
    let mut rng = Rng(7);
    let k_h = rng.normals(b * t * e, 1.0);
    let k_z = rng.normals(b * t * e, 1.0);
    let h0 = vec![0.0; b * e];
    let (got, _) = run_scan(&k_h, &k_z, &h0, b, t, e);
    let want = reference(&k_h, &k_z, &h0, b, t, e);
    assert!(max_abs_diff(&got, &want) <= 1e-4);
}

#[test]
fn step_matches_scan() {
    let (b, t, e) = (2, 40, 8);
    let mut rng = Rng(11);
    let device = cpu();
    let kh = tensor(&rng.normals(b * t * e, 2.0), [b, t, e], &device);
    let kz = tensor(&rng.normals(b * t * e, 2.0), [b, t, e], &device);
    let (lc, lv) = log_coeffs_and_values(kh, kz);
    let log_h0 = Tensor::<3>::full([b, 1, e], LOG_ZERO, &device);
    let parallel = to_vec(scan_log(lc.clone(), lv.clone(), log_h0.clone()).exp());
    let mut log_h = log_h0;
    let mut steps = Vec::new();
    for i in 0..t {
        log_h = step_log(lc.clone().narrow(1, i, 1), lv.clone().narrow(1, i, 1), log_h);
        steps.push(log_h.clone());
    }
    let stepped = to_vec(Tensor::cat(steps, 1).exp());
    assert!(max_abs_diff(&parallel, &stepped) <= 1e-4);
}

#[test]
fn extreme_inputs_stay_finite() {
    let (b, e) = (1, 4);
    for &t in &[1usize, 64, 4096] {
        for &(vh, vz) in &[(50.0, 50.0), (-50.0, -50.0), (50.0, -50.0), (-50.0, 50.0), (0.0, 0.0)] {
            let mut rng = Rng(3);
            // Alternate signs too, the hardest case for a single max reference.
            let k_h: Vec<f64> = (0..b * t * e).map(|i| if rng.uniform() < 0.5 || i % 2 == 0 { vh } else { -vh }).collect();
            let k_z: Vec<f64> = (0..b * t * e).map(|_| vz).collect();
            let (got, _) = run_scan(&k_h, &k_z, &vec![0.0; b * e], b, t, e);
            assert!(got.iter().all(|x| x.is_finite()), "T={t} k_h={vh} k_z={vz}: non-finite output");
            let want = reference(&k_h, &k_z, &vec![0.0; b * e], b, t, e);
            let err = max_abs_diff(&got, &want);
            assert!(err <= 1e-3, "T={t} k_h={vh} k_z={vz}: error {err}");
        }
    }
}

/// The fused CPU kernel against the same reference, and its gradients against autodiff through
/// the log-space scan.
#[test]
fn fused_recurrence_matches_reference_and_scan_gradients() {
    use grufinity::model::fused;
    let (b, e) = (2, 8);
    for &t in &[1usize, 7, 256] {
        let mut rng = Rng(100 + t as u64);
        let k_h = rng.normals(b * t * e, 2.0);
        let k_z = rng.normals(b * t * e, 2.0);
        let h0: Vec<f64> = (0..b * e).map(|_| rng.uniform()).collect();
        let device = cpu();
        let hz = Tensor::cat(vec![tensor(&k_h, [b, t, e], &device), tensor(&k_z, [b, t, e], &device)], 2);
        let got = fused::recurrence(hz, tensor(&h0, [b, 1, e], &device));
        let want = reference(&k_h, &k_z, &h0, b, t, e);
        assert!(max_abs_diff(&to_vec(got), &want) <= 1e-4, "T={t}");

        // Same loss through both paths; compare gradients w.r.t. k_h, k_z and h0.
        let ad = cpu().autodiff();
        let weights = tensor(&rng.normals(b * t * e, 1.0), [b, t, e], &ad);
        let grads_of = |use_fused: bool| {
            let kh = tensor(&k_h, [b, t, e], &ad).require_grad();
            let kz = tensor(&k_z, [b, t, e], &ad).require_grad();
            let h0t = tensor(&h0, [b, 1, e], &ad).require_grad();
            let h = if use_fused {
                fused::recurrence(Tensor::cat(vec![kh.clone(), kz.clone()], 2), h0t.clone())
            } else {
                let (lc, lv) = log_coeffs_and_values(kh.clone(), kz.clone());
                scan_log(lc, lv, h0t.clone().log()).exp()
            };
            let grads = (h * weights.clone()).sum().backward();
            [kh.grad(&grads).unwrap(), kz.grad(&grads).unwrap(), h0t.grad(&grads).unwrap()].map(to_vec)
        };
        let (f, s) = (grads_of(true), grads_of(false));
        for (name, (a, b)) in ["k_h", "k_z", "h0"].iter().zip(f.iter().zip(s.iter())) {
            let err = max_abs_diff(a, b);
            assert!(err <= 1e-3, "T={t}: d/d{name} differs by {err}");
        }
    }
}

/// The fused GELU feed-forward (`GELU(x W1 + b1) W2 + b2`, the activation and its derivative
/// applied inside the products) and its five gradients against Burn's ops, with more rows than
/// one epilogue task takes (64) and widths that are not multiples of 16; and, where this CPU has
/// bfloat16 products, against the same ops on bfloat16 products.
#[test]
fn fused_feed_forward_matches_burn() {
    use burn::tensor::activation::gelu;
    use grufinity::model::dense::{matmul, Bf16Products};
    use grufinity::model::fused_ff::gelu_feed_forward;
    let mut rng = Rng(77);
    let (b, t, d, h) = (3, 50, 40, 70);
    let xv = rng.normals(b * t * d, 2.0);
    let (w1v, b1v, w2v, b2v) = (rng.normals(d * h, 0.3), rng.normals(h, 1.0), rng.normals(h * d, 0.3), rng.normals(d, 1.0));
    let gv = rng.normals(b * t * d, 1.0);
    let ad = cpu().autodiff();
    let run = |fused: bool| {
        let x = tensor(&xv, [b, t, d], &ad).require_grad();
        let (w1, w2) = (tensor(&w1v, [d, h], &ad).require_grad(), tensor(&w2v, [h, d], &ad).require_grad());
        let (b1, b2) = (tensor(&b1v, [h], &ad).require_grad(), tensor(&b2v, [d], &ad).require_grad());
        let y = if fused {
            gelu_feed_forward(x.clone(), w1.clone(), b1.clone(), w2.clone(), b2.clone())
        } else {
            let hidden = gelu(matmul(x.clone().reshape([b * t, d]), w1.clone()) + b1.clone().unsqueeze::<2>());
            (matmul(hidden, w2.clone()) + b2.clone().unsqueeze::<2>()).reshape([b, t, d])
        };
        let g = (y.clone() * tensor(&gv, [b, t, d], &ad)).sum().backward();
        [
            to_vec(y),
            to_vec(x.grad(&g).unwrap()),
            to_vec(w1.grad(&g).unwrap()),
            to_vec(b1.grad(&g).unwrap()),
            to_vec(w2.grad(&g).unwrap()),
            to_vec(b2.grad(&g).unwrap()),
        ]
    };
    let names = ["value", "dL/dx", "dL/dW1", "dL/db1", "dL/dW2", "dL/db2"];
    let (ours, burn) = (run(true), run(false));
    for ((name, x), y) in names.iter().zip(&ours).zip(&burn) {
        let scale = y.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        assert!(max_abs_diff(x, y) <= 1e-5 * scale, "f32: {name} differs by {} (largest {scale})", max_abs_diff(x, y));
    }
    if let Some(_bf16) = Bf16Products::enable() {
        let (ours, separate) = (run(true), run(false));
        assert!(max_abs_diff(&ours[0], &burn[0]) > 0.0, "the bfloat16 products did not run");
        for ((name, x), y) in names.iter().zip(&ours).zip(&separate) {
            // GELU's erf differs from Burn's by ~1e-7, which can tip a value of h to the next
            // bfloat16 (a relative step of 2^-8) where it is rounded for the second product.
            let scale = y.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            assert!(max_abs_diff(x, y) <= 1e-3 * scale, "bf16: {name} differs by {} (largest {scale})", max_abs_diff(x, y));
        }
    }
}

/// The fused RMSNorm and its gradients (input and gain) against Burn's `RmsNorm`.
#[test]
fn fused_rms_norm_matches_burn() {
    use burn::module::Param;
    use burn::nn::RmsNormConfig;
    use grufinity::model::fused_norm::rms_norm;
    let mut rng = Rng(78);
    // 70 rows (not a multiple of the kernel's 32-row tasks), width 40 (not a multiple of 16).
    let values = rng.normals(5 * 14 * 40, 2.0);
    let gains: Vec<f32> = rng.normals(40, 1.0).into_iter().map(|g| g as f32).collect();
    let ad = cpu().autodiff();
    let run = |fused: bool| {
        let mut norm = RmsNormConfig::new(40).init(&ad);
        norm.gamma = Param::from_tensor(Tensor::<1>::from_data(burn::tensor::TensorData::new(gains.clone(), [40]), &ad));
        let x = tensor(&values, [5, 14, 40], &ad).require_grad();
        let y = if fused { rms_norm(&norm, x.clone()) } else { norm.forward(x.clone()) };
        // A loss that weights every output differently, so every gradient term matters.
        let w = tensor(&rng_weights(), [5, 14, 40], &ad);
        let g = (y.clone() * w).sum().backward();
        (to_vec(y), to_vec(x.grad(&g).unwrap()), to_vec(norm.gamma.val().grad(&g).unwrap()))
    };
    let (ya, dxa, dga) = run(true);
    let (yb, dxb, dgb) = run(false);
    assert!(max_abs_diff(&ya, &yb) <= 1e-5, "values differ by {}", max_abs_diff(&ya, &yb));
    assert!(max_abs_diff(&dxa, &dxb) <= 1e-4, "input gradients differ by {}", max_abs_diff(&dxa, &dxb));
    assert!(max_abs_diff(&dga, &dgb) <= 1e-3, "gain gradients differ by {}", max_abs_diff(&dga, &dgb));
}

fn rng_weights() -> Vec<f64> {
    Rng(79).normals(5 * 14 * 40, 1.0)
}

/// The CPU matrix product (`dense::matmul`) and its gradients against Burn's matmul, with a
/// transposed operand (as the tied head uses) and sizes on both sides of the threading cut.
#[test]
fn dense_matmul_matches_burn() {
    use grufinity::model::dense::matmul;
    let mut rng = Rng(80);
    let ad = cpu().autodiff();
    for (m, k, n, transposed) in [(5, 7, 3, false), (17, 33, 9, true), (300, 200, 250, false), (256, 192, 300, true)] {
        let (av, bv, wv) = (rng.normals(m * k, 1.0), rng.normals(k * n, 1.0), rng.normals(m * n, 1.0));
        let run = |ours: bool| {
            let a = tensor(&av, [m, k], &ad).require_grad();
            let b = tensor(&bv, if transposed { [n, k] } else { [k, n] }, &ad).require_grad();
            let rhs = if transposed { b.clone().transpose() } else { b.clone() };
            let y = if ours { matmul(a.clone(), rhs) } else { a.clone().matmul(rhs) };
            let g = (y.clone() * tensor(&wv, [m, n], &ad)).sum().backward();
            (to_vec(y), to_vec(a.grad(&g).unwrap()), to_vec(b.grad(&g).unwrap()))
        };
        let (ours, burn) = (run(true), run(false));
        for (name, x, y) in [("product", &ours.0, &burn.0), ("dL/da", &ours.1, &burn.1), ("dL/db", &ours.2, &burn.2)] {
            assert!(max_abs_diff(x, y) <= 1e-3, "{m}x{k}x{n}: {name} differs by {}", max_abs_diff(x, y));
        }
    }
}

/// The CPU affine map (`dense::affine`: product and bias in one op) and its three gradients
/// against Burn's matmul plus broadcast add, with more rows than one bias task takes (64) and
/// a width that is not a multiple of 16; and, where this CPU has bfloat16 products, the fused
/// bias of those products against a bfloat16 product followed by Burn's add.
#[test]
fn affine_matches_burn() {
    use grufinity::model::dense::{affine, matmul, Bf16Products};
    let mut rng = Rng(79);
    let (m, k, n) = (150, 40, 37);
    let (xv, wv, bv, gv) = (rng.normals(m * k, 1.0), rng.normals(k * n, 1.0), rng.normals(n, 1.0), rng.normals(m * n, 1.0));
    let ad = cpu().autodiff();
    let run = |fused: bool| {
        let x = tensor(&xv, [m, k], &ad).require_grad();
        let w = tensor(&wv, [k, n], &ad).require_grad();
        let b = tensor(&bv, [n], &ad).require_grad();
        let y = if fused { affine(x.clone(), w.clone(), b.clone()) } else { matmul(x.clone(), w.clone()) + b.clone().unsqueeze::<2>() };
        let g = (y.clone() * tensor(&gv, [m, n], &ad)).sum().backward();
        [to_vec(y), to_vec(x.grad(&g).unwrap()), to_vec(w.grad(&g).unwrap()), to_vec(b.grad(&g).unwrap())]
    };
    let names = ["value", "dL/dx", "dL/dw", "dL/dbias"];
    let (ours, burn) = (run(true), run(false));
    for ((name, x), y) in names.iter().zip(&ours).zip(&burn) {
        assert!(max_abs_diff(x, y) <= 1e-3, "f32: {name} differs by {}", max_abs_diff(x, y));
    }
    if let Some(_bf16) = Bf16Products::enable() {
        let (ours, separate) = (run(true), run(false));
        assert!(max_abs_diff(&ours[0], &burn[0]) > 0.0, "the bfloat16 products did not run");
        for ((name, x), y) in names.iter().zip(&ours).zip(&separate) {
            assert!(max_abs_diff(x, y) <= 1e-4, "bf16: {name} differs by {}", max_abs_diff(x, y));
        }
    }
}
