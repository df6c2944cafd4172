//! The one error type of the crate. Every message is a complete sentence a user can act on.

use std::path::PathBuf;

/// Everything that can go wrong in GRUfinity that a user can cause or fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid; `field` names the offending key.
    #[error("invalid config `{field}`: {message}")]
    Config { field: String, message: String },

    /// A file or directory that was asked for does not exist.
    #[error("{}: no such file or directory", .0.display())]
    NotFound(PathBuf),

    /// The data cannot be used as given (empty, too small, wrong encoding...).
    #[error("{0}")]
    Data(String),

    /// A checkpoint is missing, truncated or belongs to another model.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },

    /// The requested device cannot be used.
    #[error("device `{device}` is not available: {reason}")]
    Device { device: String, reason: String },

    /// Training produced a non-finite loss.
    #[error("loss became {value} at step {step}; the last good checkpoint was kept. Lower --lr or raise --warmup")]
    NonFinite { step: u64, value: f32 },

    /// Another process holds what this one needs (a run being written).
    #[error("{0}")]
    Busy(String),

    /// The caller asked to stop (Ctrl-C) before there was anything to keep.
    #[error("interrupted {0}")]
    Interrupted(String),

    /// An operating-system I/O error, with the path it concerned.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A config error for `field`. Control characters in either part (a key or a value as the
    /// user typed it) are escaped, so the message stays one line.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            field: one_line(field.into()),
            message: one_line(message.into()),
        }
    }

    /// An I/O error tied to the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A checkpoint error tied to its path.
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// `text` with its control characters (newlines, tabs, ESC...) written as Rust escapes.
fn one_line(text: String) -> String {
    if !text.chars().any(char::is_control) {
        return text;
    }
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn a_config_error_is_one_line_whatever_the_key() {
        // Found by tests/test_fuzz_python.py: TrainConfig(**{"\n": None}).
        let e = Error::config("\n", "got \"a\tb\u{1b}\"").to_string();
        assert_eq!(e, "invalid config `\\n`: got \"a\\tb\\u{1b}\"");
        assert_eq!(Error::config("lr", "must be > 0").to_string(), "invalid config `lr`: must be > 0");
    }
}
