//! Python values to the core's [`Raw`] settings, and serialisable core values to Python objects.

use std::collections::BTreeMap;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::Value;

use grufinity::schema::Raw;

/// A Python value as a [`Raw`] setting: numbers, strings, booleans, `None`, lists and tuples
/// of them, path-like objects (as strings) and integer-like objects (numpy integers).
pub fn raw(value: &Bound<'_, PyAny>) -> Raw {
    if value.is_none() {
        return Raw::None;
    }
    if let Ok(b) = value.cast::<PyBool>() {
        return Raw::Bool(b.is_true());
    }
    if let Ok(i) = value.cast::<PyInt>() {
        return i.extract::<i128>().map(Raw::Int).unwrap_or_else(|_| Raw::Other("huge int".into()));
    }
    if let Ok(f) = value.cast::<PyFloat>() {
        return Raw::Float(f.value());
    }
    if let Ok(s) = value.cast::<PyString>() {
        return Raw::Str(s.to_string_lossy().into_owned());
    }
    if let Ok(items) = value.cast::<PyList>() {
        return Raw::List(items.iter().map(|v| raw(&v)).collect());
    }
    if let Ok(items) = value.cast::<PyTuple>() {
        return Raw::List(items.iter().map(|v| raw(&v)).collect());
    }
    if let Ok(path) = value.py().import("os").and_then(|os| os.call_method1("fspath", (value,))) {
        if let Ok(s) = path.cast::<PyString>() {
            return Raw::Str(s.to_string_lossy().into_owned());
        }
    }
    if let Ok(i) = value.call_method0("__index__").and_then(|i| i.extract::<i128>()) {
        return Raw::Int(i);
    }
    let name = value.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "object".into());
    Raw::Other(name)
}

/// A dict of settings by name.
pub fn raw_map(values: &Bound<'_, PyDict>) -> PyResult<BTreeMap<String, Raw>> {
    let mut out = BTreeMap::new();
    for (k, v) in values.iter() {
        let key: String = k.extract()?;
        out.insert(key, raw(&v));
    }
    Ok(out)
}

/// A JSON value as a Python object (`null` is `None`).
pub fn json_to_py(py: Python<'_>, value: &Value) -> PyResult<Py<PyAny>> {
    Ok(match value {
        Value::Null => py.None(),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any().unbind(),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u.into_pyobject(py)?.into_any().unbind(),
            (None, Some(i)) => i.into_pyobject(py)?.into_any().unbind(),
            _ => n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any().unbind(),
        },
        Value::String(s) => s.into_pyobject(py)?.into_any().unbind(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(json_to_py(py, item)?)?;
            }
            list.into_any().unbind()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(k, json_to_py(py, v)?)?;
            }
            dict.into_any().unbind()
        }
    })
}

/// Any serialisable core value as a Python object (through its JSON form: non-finite floats
/// become `None`).
pub fn to_py<T: serde::Serialize>(py: Python<'_>, value: &T) -> PyResult<Py<PyAny>> {
    let json = serde_json::to_value(value).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    json_to_py(py, &json)
}
