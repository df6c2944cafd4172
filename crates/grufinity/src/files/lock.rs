//! One writer per directory: an OS file lock (`flock`) on `<dir>/.lock`, held for as long as the
//! [`DirLock`] lives. The kernel releases it when the process exits, however it exits, so a
//! `kill -9` never leaves a stale lock behind. The file records the holder's process id and
//! command so that a second writer can say who holds it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Name of the lock file inside a locked directory.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive lock on a directory; released when dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    pub path: PathBuf,
}

impl DirLock {
    /// Locks `dir` (created if missing) for this process, or fails at once, naming the process
    /// that holds it. `what` names the directory in the message ("run runs/x").
    pub fn acquire(dir: &Path, what: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        if !try_lock(&file) {
            let who = holder(&mut file).map_or_else(|| "another process".to_string(), |h| format!("process {h}"));
            return Err(Error::Busy(format!("{what} is being written by {who}; wait for it to finish or use another name")));
        }
        let me = format!("{} ({})", std::process::id(), command_line());
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = file.write_all(me.as_bytes());
        let _ = file.flush();
        Ok(Self { _file: file, path })
    }

    /// Whether some process holds the lock of `dir` now (readers use this to say a run is still
    /// training).
    pub fn is_held(dir: &Path) -> bool {
        match File::open(dir.join(LOCK_FILE)) {
            Ok(f) => {
                let free = try_lock(&f);
                if free {
                    unlock(&f);
                }
                !free
            }
            Err(_) => false,
        }
    }
}

/// What the lock file says about its holder (`<pid> (<command>)`). A holder that has just taken
/// the lock may not have written it yet (the file is empty, or still names the previous, dead
/// holder): read again for a moment before giving up (found by benches/crash_campaign.py).
fn holder(file: &mut File) -> Option<String> {
    for _ in 0..50 {
        let mut text = String::new();
        let read = file.rewind().and_then(|_| file.read_to_string(&mut text));
        let text = text.trim();
        let pid = text.split_whitespace().next().and_then(|p| p.parse::<u32>().ok());
        if read.is_ok() && pid.is_some_and(crate::files::atomic::process_alive) {
            return Some(text.to_string());
        }
        std::thread::sleep(std::time::Duration::from_millis(4));
    }
    None
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().take(3).collect();
    let mut line = args.join(" ");
    if line.len() > 80 {
        line.truncate(80);
    }
    line
}

#[cfg(unix)]
fn try_lock(file: &File) -> bool {
    use std::os::unix::io::AsRawFd;
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

#[cfg(unix)]
fn unlock(file: &File) {
    use std::os::unix::io::AsRawFd;
    unsafe {
        libc::flock(file.as_raw_fd(), libc::LOCK_UN);
    }
}

#[cfg(not(unix))]
fn try_lock(_file: &File) -> bool {
    true
}

#[cfg(not(unix))]
fn unlock(_file: &File) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails_naming_the_holder_and_drop_releases() {
        let dir = std::env::temp_dir().join(format!("grufinity-lock-{}", std::process::id()));
        let first = DirLock::acquire(&dir, "run x").unwrap();
        assert!(DirLock::is_held(&dir));
        // flock locks belong to open file descriptions, so a second open in this process
        // conflicts just as another process would.
        let err = DirLock::acquire(&dir, "run x").unwrap_err().to_string();
        assert!(err.contains(&format!("process {}", std::process::id())), "{err}");
        assert!(err.starts_with("run x is being written by"), "{err}");
        drop(first);
        assert!(!DirLock::is_held(&dir));
        let again = DirLock::acquire(&dir, "run x");
        assert!(again.is_ok());
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_holder_that_has_not_written_its_name_yet_is_still_named() {
        let dir = std::env::temp_dir().join(format!("grufinity-lock-late-{}", std::process::id()));
        let first = DirLock::acquire(&dir, "run y").unwrap();
        // The moment between taking the lock and writing who holds it.
        std::fs::write(&first.path, "").unwrap();
        let path = first.path.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(30));
            std::fs::write(path, format!("{} (grufinity train)", std::process::id())).unwrap();
        });
        let err = DirLock::acquire(&dir, "run y").unwrap_err().to_string();
        writer.join().unwrap();
        assert!(err.contains(&format!("process {} (grufinity train)", std::process::id())), "{err}");
        drop(first);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
