"""Finding corpus files: a file, a directory, a glob, or the built-in default corpus."""

from __future__ import annotations

import glob
import os
import sysconfig
from pathlib import Path

from .errors import DataError, DataNotFoundError

#: Cap on the size of the built-in corpus, in bytes.
DEFAULT_CORPUS_BYTES = 4_000_000

DEFAULT_CORPUS_DESCRIPTION = (
    "the Python standard library's own source files (the .py files of the running interpreter, "
    "found with sysconfig, in sorted order, first ~4 MB)"
)


def stdlib_dir() -> Path:
    """Directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def default_corpus(max_bytes: int = DEFAULT_CORPUS_BYTES) -> list[Path]:
    """The built-in corpus: the standard library's ``.py`` files, sorted by relative path,
    skipping tests and site-packages, until ``max_bytes`` is reached. Deterministic for a given
    Python installation, present on every machine, downloaded from nowhere."""
    root = stdlib_dir()
    if not root.is_dir():
        raise DataNotFoundError(f"{root}: the Python standard library was not found; give a corpus path")
    files: list[Path] = []
    total = 0
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root).parts
        if rel[0] in ("site-packages", "dist-packages") or any(p in ("test", "tests", "idle_test") for p in rel):
            continue
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if size == 0:
            continue
        files.append(path)
        total += size
        if total >= max_bytes:
            break
    if not files:
        raise DataError(f"no Python source files found under {root}; give a corpus path")
    return files


def resolve(paths: list[str] | tuple[str, ...]) -> list[Path]:
    """Expands corpus arguments into files: a file is used as is, a directory gives every
    regular non-hidden file below it (sorted), anything with ``*``, ``?`` or ``[`` is a glob."""
    out: list[Path] = []
    for arg in paths:
        if any(c in arg for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(arg), recursive=True))
            files = [m for m in matches if m.is_file()]
            if not files:
                raise DataNotFoundError(f"{arg}: the pattern matches no files; check the pattern (quote it so the shell leaves it alone)")
            out.extend(files)
            continue
        p = Path(os.path.expanduser(arg))
        if not p.exists():
            raise DataNotFoundError(f"{arg}: no such file or directory; give an existing file, directory or glob")
        if p.is_dir():
            files = sorted(
                f for f in p.rglob("*")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
                and _readable(f)
            )
            if not files:
                raise DataError(
                    f"{arg}: the directory has no readable, non-empty files to train on "
                    "(hidden files are skipped); give a directory with text files in it"
                )
            out.extend(files)
        else:
            out.append(p)
    empty = [p for p in out if p.stat().st_size == 0]
    if empty and len(empty) == len(out):
        raise DataError(f"{out[0]}: the corpus is empty (0 bytes); give a file with some text")
    return [p for p in out if p.stat().st_size > 0]


def _readable(path: Path) -> bool:
    """True for a non-empty file this process can read."""
    try:
        return path.stat().st_size > 0 and os.access(path, os.R_OK)
    except OSError:
        return False


def describe(paths: list[Path]) -> str:
    """A short human description of a list of corpus files."""
    total = sum(p.stat().st_size for p in paths)
    if len(paths) == 1:
        return f"{paths[0]} ({total:,} bytes)"
    return f"{len(paths)} files, {total:,} bytes"
