//! Reading a corpus: files concatenated in the given order, with clear errors for bad input.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Reads and concatenates `paths` in order. Every path must be a readable, non-empty file;
/// an empty total is an error.
pub fn read_files(paths: &[PathBuf]) -> Result<Vec<u8>> {
    if paths.is_empty() {
        return Err(Error::Data("no corpus files were given".into()));
    }
    let mut out = Vec::new();
    for path in paths {
        out.extend_from_slice(&read_file(path)?);
    }
    if out.is_empty() {
        return Err(Error::Data(format!(
            "the corpus is empty ({} file(s), 0 bytes); give a file with some text",
            paths.len()
        )));
    }
    Ok(out)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    if !path.exists() {
        return Err(Error::NotFound(path.to_path_buf()));
    }
    if path.is_dir() {
        return Err(Error::Data(format!("{} is a directory; give the files in it", path.display())));
    }
    std::fs::read(path).map_err(|e| Error::io(path, e))
}
