//! Backend and device selection.
//!
//! `auto` picks the fastest backend compiled into this build that works here. This build has the
//! pure-Rust CPU backend (Burn's `flex`: SIMD kernels, multi-threaded with rayon; set
//! `RAYON_NUM_THREADS` to change the thread count). A GPU name that this build cannot use is an
//! error naming the reason, never a silent fallback.

use burn::tensor::Device;

use crate::error::{Error, Result};

/// A selected device and a human description of the choice.
#[derive(Clone, Debug)]
pub struct Selected {
    pub device: Device,
    /// Canonical name: `cpu`, `cuda:0`, `vulkan:0`.
    pub name: String,
    /// One line saying what was picked and why.
    pub reason: String,
}

/// Resolves a device request (`auto`, `cpu`, `cuda[:N]`, `vulkan[:N]`, `wgpu`). The environment
/// variable `GRUFINITY_DEVICE` is read by the callers (CLI), not here.
pub fn select(request: &str) -> Result<Selected> {
    let req = request.trim().to_ascii_lowercase();
    let (kind, _index) = match req.split_once(':') {
        Some((k, i)) => {
            let idx = i
                .parse::<usize>()
                .map_err(|_| Error::config("device", format!("`{request}`: the index after `:` must be a number")))?;
            (k.to_string(), idx)
        }
        None => (req.clone(), 0),
    };
    match kind.as_str() {
        "auto" => Ok(Selected {
            device: Device::flex(),
            name: "cpu".into(),
            reason: format!("auto: using the CPU ({} threads); this build has no GPU backend", threads()),
        }),
        "cpu" | "flex" => Ok(Selected {
            device: Device::flex(),
            name: "cpu".into(),
            reason: format!("cpu ({} threads)", threads()),
        }),
        "cuda" | "vulkan" | "wgpu" | "gpu" => Err(Error::Device {
            device: request.to_string(),
            reason: "this build of grufinity was compiled without GPU backends".into(),
        }),
        _ => Err(Error::config("device", format!("unknown device `{request}` (choose: auto, cpu, cuda[:N], vulkan[:N])"))),
    }
}

fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}
