//! Thin Python bindings of the `grufinity` core: they convert types, release the GIL around
//! long work, forward events to Python callbacks and map errors to the exception classes of
//! `grufinity.errors` ([`errors`]). Decisions live in the core.
//!
//! - [`train`]: training, the settings schema, data statistics, devices, runs.
//! - [`model`]: a trained model (forward, generate, evaluate, inspect).
//! - [`convert`]: Python values to and from the core's.

mod convert;
mod errors;
mod model;
mod train;

use pyo3::prelude::*;

#[pymodule]
fn _grufinity(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(train::config_schema, m)?)?;
    m.add_function(wrap_pyfunction!(train::check_config, m)?)?;
    m.add_function(wrap_pyfunction!(train::check_sampling, m)?)?;
    m.add_function(wrap_pyfunction!(train::starts_fresh, m)?)?;
    m.add_function(wrap_pyfunction!(train::train, m)?)?;
    m.add_function(wrap_pyfunction!(train::data_stats, m)?)?;
    m.add_function(wrap_pyfunction!(train::select_device, m)?)?;
    m.add_function(wrap_pyfunction!(train::parse_device, m)?)?;
    m.add_function(wrap_pyfunction!(train::auto_devices, m)?)?;
    m.add_function(wrap_pyfunction!(train::list_devices, m)?)?;
    m.add_function(wrap_pyfunction!(train::list_checkpoints, m)?)?;
    m.add_function(wrap_pyfunction!(train::average_checkpoints, m)?)?;
    m.add_function(wrap_pyfunction!(train::run_is_training, m)?)?;
    m.add_function(wrap_pyfunction!(train::resolve_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(train::write_atomically, m)?)?;
    m.add_function(wrap_pyfunction!(train::split_point, m)?)?;
    m.add_function(wrap_pyfunction!(train::epoch_layout, m)?)?;
    m.add_function(wrap_pyfunction!(train::eval_layout, m)?)?;
    m.add_function(wrap_pyfunction!(train::count_params, m)?)?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::ModelState>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
