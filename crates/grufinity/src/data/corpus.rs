//! A corpus: files read in order (one document each), with clear errors for bad input, a
//! content fingerprint for caches, and reading in blocks cut where a tokenizer allows it.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::tokenizer::{not_utf8, Cut};
use crate::error::{Error, Result};

/// Target size of a block handed to one encoder thread.
pub const BLOCK_BYTES: usize = 1 << 20;

/// One file of a corpus.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    pub path: PathBuf,
    pub size: u64,
}

/// A source's identity in a cache header: where, how big, and what (xxh3-128 of the bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceHash {
    pub path: String,
    pub size: u64,
    pub hash: String,
}

/// The files of a corpus, in order. Empty files are left out (they hold no document).
#[derive(Clone, Debug)]
pub struct Corpus {
    pub files: Vec<SourceFile>,
}

impl Corpus {
    /// Checks `paths`: each must exist and be a file; at least one must be non-empty.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        if paths.is_empty() {
            return Err(Error::Data("no corpus files were given; give a text file, a directory or a glob".into()));
        }
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let meta = match std::fs::metadata(path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NotFound(path.clone())),
                Err(e) => return Err(Error::io(path, e)),
            };
            if meta.is_dir() {
                return Err(Error::Data(format!("{} is a directory; give the files in it", path.display())));
            }
            if meta.len() > 0 {
                files.push(SourceFile { path: path.clone(), size: meta.len() });
            }
        }
        if files.is_empty() {
            return Err(Error::Data(format!(
                "the corpus is empty ({} file(s), 0 bytes); give a file with some text",
                paths.len()
            )));
        }
        Ok(Self { files })
    }

    /// Bytes in all files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Hashes every file (and, when `utf8_for` names a text tokenizer, checks that it is
    /// UTF-8, so a bad file fails before anything is trained or cached). `progress(done)`
    /// sees the bytes read so far; returning false stops with an error.
    pub fn scan(&self, utf8_for: Option<&str>, progress: &mut dyn FnMut(u64) -> bool) -> Result<Vec<SourceHash>> {
        let mut out = Vec::with_capacity(self.files.len());
        let mut done = 0u64;
        let mut buf = vec![0u8; 4 << 20];
        for f in &self.files {
            let mut file = File::open(&f.path).map_err(|e| Error::io(&f.path, e))?;
            let mut hasher = xxhash_rust::xxh3::Xxh3::new();
            let (mut size, mut carry) = (0u64, 0usize);
            loop {
                let n = read_some(&mut file, &mut buf[carry..]).map_err(|e| Error::io(&f.path, e))?;
                hasher.update(&buf[carry..carry + n]);
                let end = carry + n;
                if let Some(tok) = utf8_for {
                    // Validate buf[..end]; an incomplete character at the end waits for more.
                    if let Err(e) = std::str::from_utf8(&buf[..end]) {
                        let bad = e.valid_up_to();
                        if e.error_len().is_some() || n == 0 {
                            let offset = size + bad as u64 - carry as u64;
                            return Err(not_utf8(tok, &f.path, offset, buf[bad]));
                        }
                        buf.copy_within(bad..end, 0);
                        carry = end - bad;
                    } else {
                        carry = 0;
                    }
                }
                size += n as u64;
                done += n as u64;
                if n == 0 {
                    break;
                }
                if !progress(done) {
                    return Err(interrupted());
                }
            }
            let path = f.path.canonicalize().unwrap_or_else(|_| f.path.clone());
            out.push(SourceHash { path: path.display().to_string(), size, hash: format!("{:032x}", hasher.digest128()) });
        }
        Ok(out)
    }

    /// Reads the corpus as blocks of about `block` bytes, cut where `cut` allows
    /// ([`Cut::Never`] gives whole files).
    pub fn blocks(&self, cut: Cut, block: usize) -> Blocks<'_> {
        Blocks { corpus: self, cut, block: block.max(16), file: 0, reader: None, offset: 0, carry: Vec::new() }
    }
}

/// The error for a stop asked for while the data was being prepared.
pub fn interrupted() -> Error {
    Error::Data("interrupted while preparing the data; nothing was cached".into())
}

/// Fills as much of `buf` as the file gives (short reads retried), 0 at the end.
fn read_some(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// One block of a corpus file.
#[derive(Clone, Debug)]
pub struct Block {
    /// Index of its file in the corpus.
    pub file: usize,
    /// Byte offset of the block in its file.
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// Iterator over the blocks of a corpus, file after file.
pub struct Blocks<'a> {
    corpus: &'a Corpus,
    cut: Cut,
    block: usize,
    file: usize,
    reader: Option<File>,
    offset: u64,
    carry: Vec<u8>,
}

impl Iterator for Blocks<'_> {
    type Item = Result<Block>;

    fn next(&mut self) -> Option<Result<Block>> {
        loop {
            let f = self.corpus.files.get(self.file)?;
            if self.reader.is_none() {
                match File::open(&f.path) {
                    Ok(r) => self.reader = Some(r),
                    Err(e) => return Some(Err(Error::io(&f.path, e))),
                }
                self.offset = 0;
                self.carry.clear();
            }
            let reader = self.reader.as_mut()?;
            let mut buf = std::mem::take(&mut self.carry);
            // Read until a cut is found after `block` bytes (or the file ends).
            let eof = loop {
                let want = buf.len().max(self.block) + self.block.min(64 << 10);
                let start = buf.len();
                buf.resize(want, 0);
                let n = match read_some(reader, &mut buf[start..]) {
                    Ok(n) => n,
                    Err(e) => return Some(Err(Error::io(&f.path, e))),
                };
                buf.truncate(start + n);
                let eof = start + n < want;
                if eof || (buf.len() >= self.block && self.cut.find(&buf).is_some()) {
                    break eof;
                }
            };
            if eof {
                self.reader = None;
                self.file += 1;
                if buf.is_empty() {
                    continue;
                }
            } else if let Some(cut) = self.cut.find(&buf) {
                self.carry = buf.split_off(cut);
            }
            let offset = self.offset;
            self.offset += buf.len() as u64;
            let file = if eof { self.file - 1 } else { self.file };
            return Some(Ok(Block { file, offset, bytes: buf }));
        }
    }
}

/// Resolves a file path for messages and keys; falls back to the path as given.
pub fn display_path(path: &Path) -> String {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf()).display().to_string()
}
