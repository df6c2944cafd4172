//! Errors and callbacks across the boundary: core errors become the exception classes of
//! `grufinity.errors`, and Python callbacks called from Rust work (which runs without the GIL)
//! keep the first exception they raise, or that a signal handler raises (Ctrl-C), to be raised
//! when the work returns.

use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;

use grufinity::Error;

/// The `grufinity.errors` class of a core error.
fn class_of(err: &Error) -> &'static str {
    match err {
        Error::Config { .. } => "ConfigError",
        Error::NotFound(_) => "DataNotFoundError",
        Error::Data(_) => "DataError",
        Error::Checkpoint { .. } => "CheckpointError",
        Error::Device { .. } => "DeviceError",
        Error::NonFinite { .. } => "TrainingDivergedError",
        Error::Busy(_) => "RunBusyError",
        Error::Interrupted(_) => "GrufinityError",
        Error::Io { .. } => "GrufinityIOError",
    }
}

/// A core error as the matching Python exception.
pub fn to_py(py: Python<'_>, err: Error) -> PyErr {
    if let Error::Interrupted(_) = err {
        return PyKeyboardInterrupt::new_err(err.to_string());
    }
    let message = err.to_string();
    match py.import("grufinity.errors").and_then(|m| m.getattr(class_of(&err))) {
        Ok(cls) => match cls.cast_into() {
            Ok(cls) => PyErr::from_type(cls, message),
            Err(e) => e.into(),
        },
        Err(e) => e,
    }
}

/// Maps a core result.
pub fn check<T>(py: Python<'_>, result: grufinity::Result<T>) -> PyResult<T> {
    result.map_err(|e| to_py(py, e))
}

/// Whether a callback's result asks to stop: only an explicit `False` does.
pub fn is_false(value: &Bound<'_, PyAny>) -> bool {
    value.is_instance_of::<pyo3::types::PyBool>() && !value.is_truthy().unwrap_or(true)
}

/// Calls into Python from Rust work running without the GIL.
#[derive(Default)]
pub struct Bridge {
    /// The first exception raised by a callback or a signal handler.
    pub pending: Option<PyErr>,
}

impl Bridge {
    /// Takes the GIL, runs pending signal handlers (Ctrl-C raises there), then `f`. Returns
    /// whether the work should go on: false once anything raised or `f` said stop.
    pub fn call(&mut self, f: impl FnOnce(Python<'_>) -> PyResult<bool>) -> bool {
        if self.pending.is_some() {
            return false;
        }
        Python::attach(|py| match py.check_signals().and_then(|()| f(py)) {
            Ok(go) => go,
            Err(e) => {
                self.pending = Some(e);
                false
            }
        })
    }

    /// The work's result, unless an exception is pending: that is the news, and it is raised
    /// instead.
    pub fn finish<T>(self, py: Python<'_>, result: grufinity::Result<T>) -> PyResult<T> {
        match self.pending {
            Some(e) => Err(e),
            None => check(py, result),
        }
    }
}
