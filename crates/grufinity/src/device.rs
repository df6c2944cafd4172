//! Backend and device selection, at run time, from one build.
//!
//! The build carries two backends: wgpu on Vulkan (any GPU with a Vulkan driver, NVIDIA ones
//! included, or Mesa's software rasteriser lavapipe) and Burn's pure-Rust CPU backend `flex`
//! (SIMD kernels, multi-threaded with rayon; `RAYON_NUM_THREADS` sets the thread count).
//!
//! Burn's native CUDA backend is not in this build: in Burn 0.22.1 it depends on `cubecl-llvm`,
//! whose build script downloads an LLVM bundle from outside the package registries, which the
//! build machines cannot reach. `cuda` requests therefore say so; NVIDIA GPUs run through Vulkan.
//!
//! `auto` tries the first discrete GPU through Vulkan, then the CPU, and takes the first that
//! initialises and passes a tiny self-check (a computation read back and compared). A software
//! Vulkan device is only used when asked for (`--device vulkan`). An explicit request that cannot work is
//! an error naming the reason, never a silent fallback.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use burn::tensor::{Device, DeviceKind, Tensor};

use crate::error::{Error, Result};

/// A selected device and a human description of the choice.
#[derive(Clone, Debug)]
pub struct Selected {
    pub device: Device,
    /// Canonical name: `cpu`, `cuda:0`, `vulkan`, `vulkan:1`.
    pub name: String,
    /// One line saying what was picked.
    pub reason: String,
    /// Why each backend tried before it was skipped (for `--verbose` and `grufinity devices`).
    pub skipped: Vec<(String, String)>,
}

/// What a device request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Request {
    Auto,
    Cpu,
    Cuda(usize),
    /// `None`: the best adapter Vulkan reports; `Some(i)`: the i-th discrete GPU.
    Vulkan(Option<usize>),
    /// wgpu on whichever graphics API it settles on, with WGSL shaders (no SPIR-V passthrough).
    Wgpu,
}

fn parse(request: &str) -> Result<Request> {
    let req = request.trim().to_ascii_lowercase();
    let (kind, index) = match req.split_once(':') {
        Some((k, i)) => {
            let idx = i.parse::<usize>().map_err(|_| {
                Error::config("device", format!("`{request}`: the index after `:` must be a number, e.g. cuda:0"))
            })?;
            (k.to_string(), Some(idx))
        }
        None => (req.clone(), None),
    };
    match (kind.as_str(), index) {
        ("auto", None) => Ok(Request::Auto),
        ("cpu" | "flex", None) => Ok(Request::Cpu),
        ("cuda" | "gpu", i) => Ok(Request::Cuda(i.unwrap_or(0))),
        ("vulkan", i) => Ok(Request::Vulkan(i)),
        ("wgpu", None) => Ok(Request::Wgpu),
        _ => Err(Error::config("device", format!("unknown device `{request}` (choose: auto, cpu, cuda[:N], vulkan[:N], wgpu)"))),
    }
}

impl Request {
    fn name(&self) -> String {
        match self {
            Request::Auto => "auto".into(),
            Request::Cpu => "cpu".into(),
            Request::Cuda(i) => format!("cuda:{i}"),
            Request::Vulkan(None) => "vulkan".into(),
            Request::Vulkan(Some(i)) => format!("vulkan:{i}"),
            Request::Wgpu => "wgpu".into(),
        }
    }

    fn device(&self) -> Device {
        match self {
            Request::Auto | Request::Cpu => Device::flex(),
            // Unreachable: `probe` refuses CUDA before asking for a device.
            Request::Cuda(_) => Device::flex(),
            Request::Vulkan(None) => Device::vulkan(DeviceKind::DefaultDevice),
            Request::Vulkan(Some(i)) => Device::vulkan(DeviceKind::DiscreteGpu(*i)),
            Request::Wgpu => Device::wgpu(DeviceKind::DefaultDevice),
        }
    }
}

/// What `request` names, without initialising anything: its canonical name and whether it is
/// a GPU backend (whose self-check may crash the process on a broken driver, so callers that
/// can should run [`select`] for it in a child process first).
pub fn describe(request: &str) -> Result<(String, bool)> {
    let req = parse(request)?;
    let gpu = matches!(req, Request::Vulkan(_) | Request::Wgpu);
    Ok((req.name(), gpu))
}

/// The GPU devices `auto` tries, in order, before the CPU: the first discrete GPU (a software
/// Vulkan device is slower than the CPU backend, so it is used only when asked for).
pub fn auto_candidates() -> Vec<String> {
    AUTO_ORDER.iter().map(Request::name).collect()
}

const AUTO_ORDER: [Request; 1] = [Request::Vulkan(Some(0))];

/// Serialises probes: they swap the process-wide panic hook.
static PROBE: Mutex<()> = Mutex::new(());

/// Initialises `request`'s backend and checks one small computation. `Err` holds the reason.
fn probe(request: &Request) -> std::result::Result<Device, String> {
    if let Request::Cuda(_) = request {
        let driver = if cuda_driver_present() {
            "an NVIDIA driver is installed, use --device vulkan to run on it"
        } else {
            "no NVIDIA driver is installed either"
        };
        return Err(format!("this build has no CUDA backend (Burn's needs an LLVM download at build time); {driver}"));
    }
    let _guard = PROBE.lock().unwrap_or_else(|e| e.into_inner());
    let previous = std::panic::take_hook();
    let message = std::sync::Arc::new(Mutex::new(String::new()));
    let sink = message.clone();
    // Backends report a missing driver by panicking: keep that off the user's terminal and
    // turn it into the reason.
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "backend initialisation failed".into());
        if let Ok(mut m) = sink.lock() {
            *m = text;
        }
    }));
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let device = request.device();
        let x = Tensor::<1>::from_floats([1.0, 2.0, 3.0, 4.0], &device);
        let got = (x.clone() * x).sum().into_scalar::<f32>();
        (device, got)
    }));
    std::panic::set_hook(previous);
    match outcome {
        Ok((device, got)) if (got - 30.0).abs() < 1e-4 => Ok(device),
        Ok((_, got)) => Err(format!("self-check computed {got}, expected 30")),
        Err(_) => {
            let m = message.lock().map(|m| m.clone()).unwrap_or_default();
            Err(first_line(&m))
        }
    }
}

fn first_line(text: &str) -> String {
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("backend initialisation failed");
    line.chars().take(200).collect()
}

/// Whether an NVIDIA user-space driver is installed, without loading it.
fn cuda_driver_present() -> bool {
    const DIRS: &[&str] = &[
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/nvidia/lib64",
        "/usr/local/cuda/lib64",
        "/usr/lib/wsl/lib",
        "/usr/local/cuda/compat",
    ];
    let mut dirs: Vec<String> = DIRS.iter().map(|s| s.to_string()).collect();
    if let Ok(extra) = std::env::var("LD_LIBRARY_PATH") {
        dirs.extend(extra.split(':').filter(|s| !s.is_empty()).map(String::from));
    }
    dirs.iter().any(|d| {
        std::fs::read_dir(d)
            .map(|entries| entries.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().starts_with("libcuda.so")))
            .unwrap_or(false)
    })
}

fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

fn cpu(skipped: Vec<(String, String)>, auto: bool) -> Selected {
    let reason = if auto {
        format!("auto: CPU ({} threads); no GPU backend initialised", threads())
    } else {
        format!("CPU ({} threads)", threads())
    };
    Selected { device: Device::flex(), name: "cpu".into(), reason, skipped }
}

/// Resolves a device request: `auto`, `cpu`, `cuda[:N]`, `vulkan[:N]` (`wgpu` is an alias of
/// `vulkan`). The environment variable `GRUFINITY_DEVICE` is read by the callers (CLI).
pub fn select(request: &str) -> Result<Selected> {
    let req = parse(request)?;
    match req {
        Request::Cpu => Ok(cpu(vec![], false)),
        Request::Auto => {
            let mut skipped = vec![];
            // Only a hardware GPU is worth leaving the CPU backend for: software Vulkan
            // (lavapipe) is slower than it, and some versions crash on Burn's shaders.
            for candidate in AUTO_ORDER {
                match probe(&candidate) {
                    Ok(device) => {
                        let name = candidate.name();
                        let reason = format!("auto: {name} (initialised and passed the self-check)");
                        return Ok(Selected { device, name, reason, skipped });
                    }
                    Err(why) => skipped.push((candidate.name(), why)),
                }
            }
            Ok(cpu(skipped, true))
        }
        explicit => match probe(&explicit) {
            Ok(device) => {
                let name = explicit.name();
                Ok(Selected { device, reason: name.clone(), name, skipped: vec![] })
            }
            Err(reason) => Err(Error::Device { device: request.to_string(), reason }),
        },
    }
}

/// Every backend of this build with whether it works here (`Ok(detail)`) or why not. With
/// `probe_gpus` false the Vulkan self-check is skipped (reported as not checked).
///
/// The self-check runs in this process: a driver that crashes instead of failing takes the
/// process with it. The Python package runs it in a child process for that reason.
pub fn list(probe_gpus: bool) -> Vec<(String, std::result::Result<String, String>)> {
    [Request::Cuda(0), Request::Vulkan(None), Request::Cpu]
        .into_iter()
        .map(|r| {
            let status = match &r {
                Request::Cpu => Ok(format!("CPU, {} threads", threads())),
                Request::Vulkan(_) if !probe_gpus => Err("not checked".to_string()),
                other => probe(other).map(|_| "initialised and passed the self-check".to_string()),
            };
            (r.name(), status)
        })
        .collect()
}

/// Burn's backends keep one random generator per process, so two models drawing random numbers
/// at once (two trainings in one process, parallel tests) would interleave their draws.
static RNG: Mutex<()> = Mutex::new(());

/// Runs `f` with `device`'s random generator seeded to `seed` and no other caller of this
/// function drawing meanwhile: what `f` draws is a function of `seed` alone.
pub fn with_seed<R>(device: &Device, seed: u64, f: impl FnOnce() -> R) -> R {
    let _only_us = RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    device.seed(seed);
    f()
}
