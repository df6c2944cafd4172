"""Crash campaign: `kill -9`, Ctrl-C, full disks and concurrent writers against the real CLI
(`grufinity train` on a generated corpus, small models, frequent checkpoints), each followed by
a resume, checking that nothing is lost or corrupted.

    python benches/crash_campaign.py            # the full campaign (a few minutes on 2 cores)
    python benches/crash_campaign.py --quick    # a few of each (CI: tests/test_crash_campaign.py)

Scenarios:
- `kill -9` at random moments (start-up included) of a run that is resumed again and again;
- `kill -9` aimed at checkpoint writes: as soon as a `.tmp-step-*` directory of the process
  appears, plus a random delay up to a typical write's duration (a larger model, a checkpoint
  every step);
- Ctrl-C (SIGINT) at each kind of event seen on `--progress json`: start, step, eval, sample,
  saved; and a double Ctrl-C, the second one during the checkpoint the first one asked for;
- a full disk: a file size limit (RLIMIT_FSIZE) smaller than a checkpoint, and, when this process
  may mount one (root), a small tmpfs holding the run, and one holding the token cache;
- concurrent writers: a second process resuming a run that is being written, one starting it
  anew, three resuming an idle run at once; two runs encoding the same corpus into one cache.

After each: every checkpoint that looks complete (has trainer.json) is whole and loads
(`grufinity.load`), `last`/`best` point at complete checkpoints, the next run resumes from
`last` having lost at most `--save-every` steps of those the killed process reported (none
after a Ctrl-C), it leaves no temporaries of dead processes, and a failure prints one line.
Prints the counts; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import queue
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crash_checks as checks  # noqa: E402

CLI = [str(Path(sys.executable).parent / "grufinity")]
if not Path(CLI[0]).exists():
    CLI = [sys.executable, "-m", "grufinity"]

WORDS = ("the of and to in is was that for it with as his on be at by had are but from or have an they which one "
         "you were her all she there would their we him been has when who will more no if out so said what up its "
         "about into than them can only other new some could time these two may then do first any my now").split()


@dataclasses.dataclass(frozen=True)
class Spec:
    """A run of the campaign: its name and the flags of its first start."""

    name: str
    flags: tuple[str, ...]
    save_every: int


def spec(name: str, dim: int, depth: int, save_every: int, *extra: str) -> Spec:
    flags = ("--device", "cpu", "--dim", str(dim), "--depth", str(depth), "--batch-size", "2", "--chunk-len", "16",
             "--save-every", str(save_every), "--log-every", "1", "--eval-every", "5", "--eval-tokens", "256",
             "--sample-tokens", "8", *extra)
    return Spec(name, flags, save_every)


SMALL = spec("random", 32, 1, 2)
#: Checkpoints of ~18 MB, one per step: writes long enough to be hit from outside.
LARGE = spec("aimed", 192, 3, 1, "--keep-last", "2", "--eval-every", "0")
#: Checkpoints of ~1.3 MB, larger than any other file of the run.
MEDIUM = spec("disk", 64, 2, 2, "--keep-last", "1", "--eval-every", "0")


class Victim:
    """One `grufinity train --progress json` process and what it reported on stdout."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, preexec: Optional[Callable[[], None]] = None,
                 expected: int = 0):
        self.log = log
        self.expected = expected  # the step it should resume from
        with open(log, "w") as err:
            self.proc = subprocess.Popen([*CLI, "train", *args, "--progress", "json"], stdout=subprocess.PIPE,
                                         stderr=err, text=True, env=env, preexec_fn=preexec)
        self.pid = self.proc.pid
        self.events: queue.Queue[Optional[dict[str, Any]]] = queue.Queue()
        self.reported = 0  # the highest step it reported
        self.start: Optional[dict[str, Any]] = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") == "start":
                self.start = e
            if isinstance(e.get("step"), int):
                self.reported = max(self.reported, e["step"])
            self.events.put(e)
        self.events.put(None)

    def wait_for(self, kind: str, nth: int = 1, timeout: float = 60) -> Optional[dict[str, Any]]:
        """The `nth` event of `kind`, or None if the process ends or `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                e = self.events.get(timeout=left)
            except queue.Empty:
                return None
            if e is None:
                return None
            if e["event"] == kind:
                nth -= 1
                if nth == 0:
                    return e
        return None

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def finish(self, timeout: float = 60) -> Optional[int]:
        """The exit code (negative: killed by that signal); None when it had to be killed."""
        try:
            rc: Optional[int] = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = None
        self.reader.join(10)
        return rc

    def stderr(self) -> list[str]:
        return [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]


class Campaign:
    def __init__(self, work: Path, rng: random.Random, verbose: bool):
        self.work, self.rng, self.verbose = work, rng, verbose
        self.cache = work / "cache"
        self.corpus = work / "corpus.txt"
        text = "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(4000))
        self.corpus.write_text(text + "\n")
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRUFINITY_CACHE": str(self.cache)}
        self.env.pop("GRUFINITY_DEVICE", None)
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []
        self.checked = self.corrupt = self.max_lost = self.debris_bytes = self.launches = 0
        #: Per run: the highest step reported by its processes since the last one that started.
        self.pending: dict[Path, int] = {}

    # ------------------------------------------------------------ running and checking

    def fail(self, what: str) -> None:
        self.failures.append(what)
        print(f"  FAIL: {what}", flush=True)

    def run_dir(self, spec: Spec, out: Optional[Path] = None) -> Path:
        return (out or self.work / "runs") / spec.name

    def launch(self, spec: Spec, *extra: str, out: Optional[Path] = None, fresh_args: bool = False,
               preexec: Optional[Callable[[], None]] = None, env: Optional[dict[str, str]] = None) -> Victim:
        """Starts the run of `spec`: a resume when it has a checkpoint, else a new run."""
        run = self.run_dir(spec, out)
        budget = () if "--max-steps" in extra else ("--max-steps", "1000000000")
        if checks.complete_checkpoints(run) and not fresh_args:
            args = ["--resume", str(run), "--device", "cpu", *budget, *extra]
        else:
            args = [str(self.corpus), "--out-dir", str(run.parent), "--name", spec.name, *spec.flags, *budget, *extra]
        self.launches += 1
        return Victim(args, env or self.env, self.work / f"stderr-{self.launches}.txt", preexec, checks.last_step(run))

    def after(self, v: Victim, spec: Spec, out: Optional[Path] = None) -> None:
        """Checks the run once `v` has ended (killed, interrupted or failed)."""
        run = self.run_dir(spec, out)
        if v.start is not None:
            step = v.start["step"]
            if step != v.expected:
                self.fail(f"{spec.name}: resumed from step {step}, but `last` was at {v.expected}")
            # Negative when the last step was saved but its line never printed (Ctrl-C in the callback).
            lost = max(0, self.pending.get(run, 0) - step)
            if lost > spec.save_every:
                self.fail(f"{spec.name}: {lost} steps lost (save every {spec.save_every})")
            self.max_lost = max(self.max_lost, lost)
            self.counts["resumes" if v.start.get("resumed_from") else "new runs (or nothing saved yet)"] += 1
            self.pending[run] = v.reported
            left = checks.run_debris(run, spare=(v.pid,))
            if left:
                self.fail(f"{spec.name}: a run left temporaries of dead processes: {sorted(left)}")
            self.debris_bytes += sum(left.values())
        else:
            self.pending[run] = max(self.pending.get(run, 0), v.reported)
        problems, checked = checks.run_problems(run)
        self.checked += checked
        self.corrupt += sum("looks complete" in p for p in problems)
        for p in problems:
            self.fail(p)

    def kill(self, v: Victim, spec: Spec, what: str, out: Optional[Path] = None) -> None:
        v.signal(signal.SIGKILL)
        rc = v.finish()
        if rc != -signal.SIGKILL:
            self.fail(f"{spec.name}: the process ended by itself before the kill (exit {rc}): {v.stderr()[-1:]}")
        self.counts[what] += 1
        if checks.run_debris(self.run_dir(spec, out)):
            self.counts["kills that left a half-written checkpoint (removed by the next run)"] += 1
        self.after(v, spec, out)

    def settle(self, spec: Spec, out: Optional[Path] = None) -> None:
        """A last, clean run of one more step: it must resume and leave no debris at all."""
        run = self.run_dir(spec, out)
        v = self.launch(spec, "--max-steps", str(checks.last_step(run) + 1), out=out)
        rc = v.finish(120)
        if rc != 0:
            self.fail(f"{spec.name}: the final resume failed (exit {rc}): {v.stderr()[-1:]}")
        self.after(v, spec, out)
        left = {**checks.run_debris(run), **checks.debris([self.cache]), **checks.orphan_token_files(self.cache)}
        if left:
            self.fail(f"{spec.name}: debris after the final run: {sorted(left)}")
        self.debris_bytes += sum(left.values())

    def wait_write(self, v: Victim, run: Path, timeout: float = 60) -> bool:
        """Waits until `v` is writing a checkpoint (its `.tmp-step-*` directory exists)."""
        ckpts, suffix = run / "checkpoints", f"-{v.pid}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and v.proc.poll() is None:
            try:
                if any(n.startswith(".tmp-step-") and n.endswith(suffix) for n in os.listdir(ckpts)):
                    return True
            except FileNotFoundError:
                pass
            time.sleep(0.0005)
        return False

    def clean_error(self, v: Victim, spec: Spec, rc: Optional[int], *words: str) -> None:
        """`v` must have failed with one `error:` line containing one of `words`."""
        lines = v.stderr()
        errors = [line for line in lines if line.startswith("error:")]
        if rc in (0, None) or len(errors) != 1 or any("Traceback" in line for line in lines):
            self.fail(f"{spec.name}: expected one error line, got exit {rc}: {lines[-5:]}")
        elif not any(w in errors[0] for w in words):
            self.fail(f"{spec.name}: the error does not say {' or '.join(words)}: {errors[0]}")
        elif self.verbose:
            print(f"    {errors[0]}")

    # ------------------------------------------------------------ scenarios

    def random_kills(self, n: int) -> None:
        for _ in range(n):
            v = self.launch(SMALL)
            time.sleep(self.rng.uniform(0.0, 1.5))
            self.kill(v, SMALL, "kill -9 at a random moment")
        self.settle(SMALL)

    def aimed_kills(self, n: int) -> None:
        run = self.run_dir(LARGE)
        for _ in range(n):
            v = self.launch(LARGE)
            if not self.wait_write(v, run):
                self.fail(f"{LARGE.name}: no checkpoint write seen: {v.stderr()[-1:]}")
            time.sleep(self.rng.uniform(0.0, 0.05))
            self.kill(v, LARGE, "kill -9 during a checkpoint write")
        self.settle(LARGE)

    def ctrl_c(self, kinds: tuple[str, ...], n: int) -> None:
        s = dataclasses.replace(SMALL, name="ctrl-c")
        run = self.run_dir(s)
        for kind in kinds * n:
            v = self.launch(s)
            if v.wait_for(kind, 1 if kind == "start" else self.rng.randint(1, 3)) is None:
                self.fail(f"{s.name}: no `{kind}` event: {v.stderr()[-1:]}")
            v.signal(signal.SIGINT)
            rc = v.finish()
            self.counts[f"Ctrl-C at `{kind}`"] += 1
            said = [line for line in v.stderr() if line.startswith("interrupted at step")]
            if rc != 130 or not said:
                self.fail(f"{s.name}: Ctrl-C at `{kind}`: exit {rc}, {v.stderr()[-2:]}")
            elif checks.last_step(run) < v.reported:
                self.fail(f"{s.name}: Ctrl-C at `{kind}` saved step {checks.last_step(run)}, reported {v.reported}")
            self.after(v, s)
        self.settle(s)

    def double_ctrl_c(self, n: int) -> None:
        s = dataclasses.replace(LARGE, name="double-ctrl-c")
        run = self.run_dir(s)
        for _ in range(n):
            v = self.launch(s)
            v.wait_for("start" if checks.complete_checkpoints(run) else "saved")
            v.signal(signal.SIGINT)
            if self.wait_write(v, run, timeout=10):
                time.sleep(self.rng.uniform(0.0, 0.03))
            v.signal(signal.SIGINT)
            started = time.monotonic()
            rc = v.finish()
            if rc not in (130, -signal.SIGINT) or time.monotonic() - started > 10:
                self.fail(f"{s.name}: second Ctrl-C: exit {rc} after {time.monotonic() - started:.1f} s")
            self.counts["double Ctrl-C (the second during the save)"] += 1
            self.after(v, s)
        self.settle(s)

    def file_size_limit(self, n: int) -> None:
        s = dataclasses.replace(MEDIUM, name="fsize")
        run = self.run_dir(s)
        for _ in range(n):
            if not checks.complete_checkpoints(run):
                self.settle(s)
            limit = (run / "checkpoints" / "last" / "model.safetensors").stat().st_size // 2

            def small_files(limit: int = limit) -> None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

            v = self.launch(s, preexec=small_files)
            rc = v.finish(120)
            self.counts["full disk: RLIMIT_FSIZE below a checkpoint's size"] += 1
            self.clean_error(v, s, rc, "is intact")
            self.after(v, s)
            self.settle(s)

    def tmpfs(self, n: int) -> None:
        mnt = self.work / "tmpfs"
        mnt.mkdir()
        mount = ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)]
        if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
            print("  tmpfs: skipped (cannot mount one here)")
            return
        try:
            self._tmpfs_rounds(mnt, n)
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)

    def _tmpfs_rounds(self, mnt: Path, n: int) -> None:
        def resize(size: int) -> None:
            subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)

        def used() -> int:
            st = os.statvfs(mnt)
            return (st.f_blocks - st.f_bfree) * st.f_frsize

        # The token cache on a full disk: encoding fails cleanly, then works with space.
        cache = mnt / "cache"
        resize(used() + 64 * 1024)
        s = dataclasses.replace(MEDIUM, name="tmpfs-cache")
        v = self.launch(s, env={**self.env, "GRUFINITY_CACHE": str(cache)})
        rc = v.finish(120)
        self.counts["full disk: tmpfs holding the token cache"] += 1
        self.clean_error(v, s, rc, "No space left")
        left = {**checks.debris([cache]), **checks.orphan_token_files(cache)}
        if left:
            self.fail(f"the failed encoding left {sorted(left)}")
        shutil.rmtree(cache, ignore_errors=True)
        # The run on a full disk: a checkpoint write fails cleanly, the previous one is intact.
        s = dataclasses.replace(MEDIUM, name="tmpfs")
        resize(64 << 20)
        self.settle(s, out=mnt)
        checkpoint = checks.size_of((self.run_dir(s, mnt) / "checkpoints" / "last").resolve())
        for _ in range(n):
            resize(used() + checkpoint // 2)
            v = self.launch(s, out=mnt)
            rc = v.finish(120)
            self.counts["full disk: tmpfs holding the run"] += 1
            self.clean_error(v, s, rc, "No space left")
            self.after(v, s, mnt)
            resize(used() + 20 * checkpoint)
            self.settle(s, out=mnt)

    def concurrent(self, n: int) -> None:
        s = dataclasses.replace(SMALL, name="shared")
        for _ in range(n):
            first = self.launch(s)
            if first.wait_for("saved") is None:
                self.fail(f"{s.name}: no checkpoint: {first.stderr()[-1:]}")
            for fresh in (False, True):
                second = self.launch(s, fresh_args=fresh)
                rc = second.finish()
                self.counts["second writer while one writes"] += 1
                self.clean_error(second, s, rc, f"process {first.pid}", "already exists")
            self.kill(first, s, "kill -9 of a writer that refused others")
            racers = [self.launch(s) for _ in range(3)]
            winners = [v for v in racers if v.wait_for("start") is not None]
            for v in racers:
                if v not in winners:
                    self.clean_error(v, s, v.finish(), "being written by process")
            time.sleep(self.rng.uniform(0.0, 1.0))
            self.counts["three writers started at once"] += 1
            if len(winners) != 1:
                self.fail(f"{s.name}: {len(winners)} of 3 simultaneous writers are running")
            for v in winners:
                self.kill(v, s, "kill -9 of a writer that refused others")
        self.settle(s)

    def cache_race(self, n: int) -> None:
        for i in range(n):
            corpus = self.work / f"race-{i}.txt"
            corpus.write_text(self.corpus.read_text() * 4)
            racers = [Victim([str(corpus), "--out-dir", str(self.work / "runs"), "--name", f"race-{i}-{k}",
                              *SMALL.flags, "--max-steps", "2"], self.env, self.work / f"race-{i}-{k}.txt")
                      for k in range(2)]
            for v in racers:
                rc = v.finish(120)
                if rc != 0:
                    self.fail(f"race-{i}: a run sharing the cache failed (exit {rc}): {v.stderr()[-1:]}")
            self.counts["two runs encoding one corpus into one cache"] += 1
            # The loser's token file may stay until the next run on that corpus, not after it.
            rc = Victim([str(corpus), "--out-dir", str(self.work / "runs"), "--name", f"race-{i}-next", *SMALL.flags,
                         "--max-steps", "1"], self.env, self.work / f"race-{i}-next.txt").finish(120)
            left = checks.orphan_token_files(self.cache)
            if rc != 0 or left:
                self.fail(f"race-{i}: the next run (exit {rc}) left token files no header names: {sorted(left)}")
            self.debris_bytes += sum(left.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few of each (CI)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep runs here (default: a temporary directory)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each failure line seen")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int(time.time())
    n = dict(random=3, aimed=2, ctrl_c=1, double=1, fsize=1, tmpfs=1, concurrent=1, race=1) if args.quick else \
        dict(random=60, aimed=40, ctrl_c=4, double=10, fsize=3, tmpfs=3, concurrent=4, race=2)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="grufinity-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"crash campaign ({'quick' if args.quick else 'full'}, seed {seed}) in {work}", flush=True)
    c = Campaign(work, random.Random(seed), args.verbose)
    try:
        for title, run in [
            ("kill -9 at random moments", lambda: c.random_kills(n["random"])),
            ("kill -9 during checkpoint writes", lambda: c.aimed_kills(n["aimed"])),
            ("Ctrl-C at each event", lambda: c.ctrl_c(("start", "step", "eval", "sample", "saved"), n["ctrl_c"])),
            ("double Ctrl-C", lambda: c.double_ctrl_c(n["double"])),
            ("full disk: RLIMIT_FSIZE", lambda: c.file_size_limit(n["fsize"])),
            ("full disk: tmpfs", lambda: c.tmpfs(n["tmpfs"])),
            ("concurrent writers", lambda: c.concurrent(n["concurrent"])),
            ("concurrent cache writers", lambda: c.cache_race(n["race"])),
        ]:
            before = len(c.failures)
            print(f"- {title}", flush=True)
            run()
            print(f"  {'ok' if len(c.failures) == before else f'{len(c.failures) - before} failure(s)'}", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    kills = sum(v for k, v in c.counts.items() if k.startswith("kill -9"))
    interrupts = sum(v for k, v in c.counts.items() if "Ctrl-C" in k)
    print(f"\n{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{time.monotonic() - started:.0f} s")
    for k, v in c.counts.items():
        print(f"  {v:4d}  {k}")
    print(f"{kills} kills, {interrupts} Ctrl-C, {c.counts['resumes']} resumes "
          f"(+{c.counts['new runs (or nothing saved yet)']} new starts), "
          f"{c.corrupt} corrupt of {c.checked} complete-looking checkpoints checked, "
          f"max {c.max_lost} step(s) lost, {c.debris_bytes} bytes of debris, {len(c.failures)} failure(s)")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
