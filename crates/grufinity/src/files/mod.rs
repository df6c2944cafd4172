//! Files on disk: atomic writes ([`atomic`]), named tensors in safetensors ([`tensors`]) and the
//! one-writer lock of a directory ([`lock`]).

pub mod atomic;
pub mod lock;
pub mod tensors;

pub use atomic::{point_link, remove_dir_atomically, remove_stale_temporaries, temp_name, write_dir_atomically, write_file_atomically, TempFile};
pub use lock::DirLock;
pub use tensors::{HostTensor, Values};
