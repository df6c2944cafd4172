//! Atomic writes: everything is written under a temporary name that carries the writer's
//! process id and renamed into place once complete, so a crash or a full disk never leaves a
//! file or directory that looks valid. Temporaries of processes that died are removed by
//! [`remove_stale_temporaries`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Prefix of every temporary name: `.tmp-<what>[-<n>]-<pid>` (the writer's process id last, so
/// that [`remove_stale_temporaries`] can tell whose it is).
const TEMP_PREFIX: &str = ".tmp-";

/// The temporary sibling name of `path` for this process: `.tmp-<file name>-<pid>`. For what
/// one thread of a process writes at a time (a run's checkpoints, under its lock).
pub fn temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    path.with_file_name(format!("{TEMP_PREFIX}{name}-{}", std::process::id()))
}

/// A temporary file beside its destination, unique to this process and call, removed on drop
/// unless [`keep`](Self::keep) renames it into place.
pub struct TempFile {
    pub path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// A temporary for `dest` (not created yet): `.tmp-<name>-<n>-<pid>`.
    pub fn for_path(dest: &Path) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let path = dest.with_file_name(format!("{TEMP_PREFIX}{name}-{n}-{}", std::process::id()));
        Self { path, armed: true }
    }

    /// Renames the temporary to `dest`.
    pub fn keep(mut self, dest: &Path) -> Result<()> {
        std::fs::rename(&self.path, dest).map_err(|e| Error::io(dest, e))?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes `contents` to `path` atomically (safe from several threads at once).
pub fn write_file_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = TempFile::for_path(path);
    // Errors name the file asked for, not its temporary.
    std::fs::write(&tmp.path, contents).map_err(|e| Error::io(path, e))?;
    tmp.keep(path)
}

/// Builds a directory at `dir` atomically: `fill` writes into a temporary sibling, which is
/// then renamed to `dir` (replacing an older `dir` only once the new one is complete).
pub fn write_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir.parent().ok_or_else(|| Error::checkpoint(dir, "has no parent directory"))?;
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = temp_name(dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let replaced = dir.exists();
    if replaced && exchange(&tmp, dir) {
        // `dir` was whole at every instant; the temporary now holds the old contents.
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok(());
    }
    // Elsewhere: move the old one aside, then the new one in (a crash between the two renames
    // leaves no `dir`).
    let old = aside(dir);
    if replaced {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    if let Err(e) = std::fs::rename(&tmp, dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        if replaced {
            let _ = std::fs::rename(&old, dir);
        }
        return Err(Error::io(dir, e));
    }
    if replaced {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// Swaps two paths in one step (Linux `renameat2` with `RENAME_EXCHANGE`); false where the
/// system or the file system cannot.
fn exchange(a: &Path, b: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let (Ok(a), Ok(b)) = (std::ffi::CString::new(a.as_os_str().as_bytes()), std::ffi::CString::new(b.as_os_str().as_bytes()))
        else {
            return false;
        };
        // SAFETY: two valid NUL-terminated paths; the call reads them and returns.
        let rc = unsafe {
            libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE)
        };
        rc == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        false
    }
}

/// Removes the directory `dir` so that it never looks half there: it is renamed to a temporary
/// name first (`.tmp-old-<name>-<pid>`), then deleted; a crash in between leaves a temporary
/// that [`remove_stale_temporaries`] deletes later.
pub fn remove_dir_atomically(dir: &Path) -> Result<()> {
    let old = aside(dir);
    std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))
}

/// Where `dir` is moved while it is replaced or removed: `.tmp-old-<name>-<pid>` beside it, a
/// temporary that [`remove_stale_temporaries`] deletes once this process is gone.
fn aside(dir: &Path) -> PathBuf {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("dir");
    dir.with_file_name(format!("{TEMP_PREFIX}old-{name}-{}", std::process::id()))
}

/// Points the link `name` (e.g. `last`, `best`) inside `dir` at `target` (a sibling's name),
/// atomically.
pub fn point_link(dir: &Path, name: &str, target: &str) -> Result<()> {
    let link = dir.join(name);
    let tmp = temp_name(&link);
    let _ = std::fs::remove_file(&tmp);
    #[cfg(unix)]
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| Error::io(&tmp, e))?;
    #[cfg(not(unix))]
    std::fs::write(&tmp, target).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(&link, e)
    })
}

/// Whether process `pid` is alive on this machine.
pub fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
        // Signal 0 checks existence; EPERM means it exists but belongs to someone else.
        let rc = unsafe { libc::kill(pid, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// Removes the temporaries (`.tmp-*-<pid>`) in `dir` left by processes that are gone (a
/// `kill -9` mid-write); those of live processes are left alone. Returns the bytes freed.
pub fn remove_stale_temporaries(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut freed = 0;
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(TEMP_PREFIX) else { continue };
        let Some(pid) = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if process_alive(pid) {
            continue;
        }
        let path = entry.path();
        let size = tree_size(&path);
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if removed.is_ok() {
            freed += size;
        }
    }
    freed
}

/// Bytes of the regular files below `path` (or of `path` itself).
fn tree_size(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|entries| entries.filter_map(|e| e.ok()).map(|e| tree_size(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temporaries_of_dead_processes_go_live_ones_stay() {
        let dir = std::env::temp_dir().join(format!("grufinity-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A pid that cannot exist (above Linux's pid_max) stands for a dead process.
        let dead = dir.join(".tmp-step-3-4294967");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("model.safetensors"), vec![0u8; 1000]).unwrap();
        let live = temp_name(&dir.join("step-4"));
        std::fs::create_dir(&live).unwrap();
        std::fs::write(dir.join("keep.txt"), b"x").unwrap();
        assert_eq!(remove_stale_temporaries(&dir), 1000);
        assert!(!dead.exists());
        assert!(live.exists());
        assert!(dir.join("keep.txt").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_replaced_directory_is_complete_at_every_instant() {
        // Rewriting a checkpoint that `last` points at (a resumed run stopped before its first
        // step saves the same step again) must never leave a moment without it: a crash there
        // would leave `last` dangling and the only copy under a temporary name.
        let root = std::env::temp_dir().join(format!("grufinity-replace-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("step-1");
        let write = |i: usize| write_dir_atomically(&dir, |tmp| Ok(std::fs::write(tmp.join("trainer.json"), i.to_string()).unwrap()));
        write(0).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        let missing = std::thread::scope(|s| {
            let watcher = s.spawn(|| {
                let mut missing = 0;
                while !done.load(Ordering::Relaxed) {
                    missing += usize::from(!dir.join("trainer.json").exists());
                }
                missing
            });
            for i in 1..2000 {
                write(i).unwrap();
            }
            done.store(true, Ordering::Relaxed);
            watcher.join().unwrap()
        });
        assert_eq!(missing, 0, "the directory was missing {missing} times while it was replaced");
        assert_eq!(std::fs::read_to_string(dir.join("trainer.json")).unwrap(), "1999");
        let names: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["step-1"], "no temporary is left");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
