"""What the crash campaign (crash_campaign.py) checks on disk after each crash: every checkpoint
that looks complete is whole and loads, `last`/`best` point at complete checkpoints, and which
temporaries dead processes left behind (in the run and in the token cache)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Optional

import grufinity

#: A checkpoint directory is complete once it has this file (written last).
TRAINER = "trainer.json"
TENSOR_FILES = ("model.safetensors", "optimizer.safetensors", "state.safetensors")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_pid(name: str) -> Optional[int]:
    """The writer's pid of a temporary name (`.tmp-<what>-<pid>`), None for other names."""
    if not name.startswith(".tmp-"):
        return None
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def size_of(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size if path.is_symlink() else path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def debris(dirs: list[Path], spare: tuple[int, ...] = ()) -> dict[str, int]:
    """Temporaries of dead processes in `dirs` (except those of pids in `spare`): path -> bytes."""
    out = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for p in d.iterdir():
            pid = temp_pid(p.name)
            if pid is not None and pid not in spare and not alive(pid):
                try:
                    out[str(p)] = size_of(p)
                except FileNotFoundError:  # removed while we looked
                    pass
    return out


def run_debris(run: Path, spare: tuple[int, ...] = ()) -> dict[str, int]:
    return debris([run, run / "checkpoints"], spare)


def orphan_token_files(cache: Path) -> dict[str, int]:
    """Token files of the cache that no header names (left by an encoding that lost a race)."""
    if not cache.is_dir():
        return {}
    named = set()
    for header in cache.glob("*.json"):
        try:
            named.add(json.loads(header.read_text())["tokens_file"])
        except (ValueError, KeyError, TypeError):
            continue
    return {str(p): p.stat().st_size for p in cache.glob("*.tokens") if p.name not in named}


def safetensors_problem(path: Path) -> Optional[str]:
    """Why `path` is not a whole safetensors file, or None."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        return f"{path.name}: {e.strerror}"
    if len(raw) < 8:
        return f"{path.name}: {len(raw)} bytes"
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        return f"{path.name}: header of {n} bytes in a file of {len(raw)}"
    try:
        header = json.loads(raw[8 : 8 + n])
    except ValueError:
        return f"{path.name}: header is not JSON"
    ends = [meta["data_offsets"][1] for name, meta in header.items() if name != "__metadata__"]
    if max(ends, default=0) != len(raw) - 8 - n:
        return f"{path.name}: tensors end at {max(ends, default=0)}, data is {len(raw) - 8 - n} bytes"
    return None


def checkpoint_problem(ckpt: Path) -> Optional[str]:
    """Why a checkpoint that looks complete (has trainer.json) is not usable, or None."""
    try:
        trainer = json.loads((ckpt / TRAINER).read_text())
    except (OSError, ValueError) as e:
        return f"{TRAINER}: {e}"
    if f"step-{trainer.get('step')}" != ckpt.name:
        return f"{TRAINER} says step {trainer.get('step')}"
    for name in TENSOR_FILES:
        problem = safetensors_problem(ckpt / name)
        if problem:
            return problem
    try:
        json.loads((ckpt / "tokenizer.json").read_text())
        grufinity.load(ckpt, device="cpu")
    except (OSError, ValueError, grufinity.GrufinityError) as e:
        return f"does not load: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    return None


def complete_checkpoints(run: Path) -> list[Path]:
    ckpts = run / "checkpoints"
    if not ckpts.is_dir():
        return []
    found = [p for p in ckpts.glob("step-*") if not p.is_symlink() and (p / TRAINER).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def last_step(run: Path) -> int:
    """The step a resume starts from: `last`'s, else the newest complete checkpoint's (a crash
    came between a checkpoint and its link), else 0 (no checkpoint yet)."""
    last = run / "checkpoints" / "last"
    if (last / TRAINER).is_file():
        return json.loads((last / TRAINER).read_text())["step"]
    complete = complete_checkpoints(run)
    return int(complete[-1].name.split("-")[1]) if complete else 0


def run_problems(run: Path) -> tuple[list[str], int]:
    """Problems of a run's checkpoints and links after a crash, and the checkpoints checked."""
    problems = []
    checked = complete_checkpoints(run)
    for ckpt in checked:
        problem = checkpoint_problem(ckpt)
        if problem:
            problems.append(f"{ckpt} looks complete but is corrupt: {problem}")
    for link in ("last", "best"):
        path = run / "checkpoints" / link
        if os.path.lexists(path) and not (path / TRAINER).is_file():
            problems.append(f"`{link}` points at {os.readlink(path)}, which is not a complete checkpoint")
    if checked:
        try:
            grufinity.load(run, device="cpu")  # what `grufinity generate RUN` reads
        except grufinity.GrufinityError as e:
            problems.append(f"{run} has {len(checked)} complete checkpoint(s) but does not load: {e}")
    return problems, len(checked)
