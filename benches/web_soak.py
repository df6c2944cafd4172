"""Soak of ``grufinity serve``: concurrent browser sessions generating at once, then the
server's memory back where it started.

    python benches/web_soak.py [RUN] [--sessions 4] [--tokens 500] [--rounds 3]

Starts ``grufinity serve RUN`` in its own process (without RUN, first trains a small model for
~30 s on ../shared/data/tinyshakespeare, or on the built-in corpus), loads the model with one
short warm-up generation, and records the server's RSS (the baseline). Then SESSIONS clients,
each its own session (its own recurrent state), generate TOKENS tokens per round for ROUNDS
rounds at the same time, each round continuing its session's state. Fails (exit 1) on any
error, on a missing token, or when the RSS afterwards is more than 10% over the baseline.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

SHAKESPEARE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt"
SESSION = "x-grufinity-session"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def train_small(out: Path) -> Path:
    data = [str(SHAKESPEARE)] if SHAKESPEARE.is_file() else []
    print(f"training a small model (dim 128, depth 2, ~30 s) on {data[0] if data else 'the built-in corpus'}")
    done = subprocess.run([sys.executable, "-m", "grufinity", "train", *data, "--dim", "128", "--depth", "2",
                           "--batch-size", "8", "--chunk-len", "128", "--max-time", "30", "--eval-every", "0",
                           "--name", "soak", "--out-dir", str(out), "--progress", "plain"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"training failed: {done.stderr.strip().splitlines()[-1:]}")
    return out / "soak"


def start_server(run: Path, sessions: int, tokens: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "grufinity", "serve", str(run), "--port", "0",
                             "--max-concurrent", str(sessions), "--max-new-tokens", str(tokens)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.search(r"http://127\.0\.0\.1:(\d+)/", line):
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return proc, int(m.group(1))
    raise SystemExit("grufinity serve did not start")


def generate(port: int, run: str, session: Optional[str], prompt: str, tokens: int, seed: int) -> tuple[str, dict[str, Any]]:
    """One generation; returns the session id and the ``done`` line (an ``error`` raises)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    headers = {"Content-Type": "application/json", "Host": f"127.0.0.1:{port}"}
    if session:
        headers[SESSION] = session
    body = {"run": run, "prompt": prompt, "sampling": {"max_new_tokens": tokens, "seed": seed, "temperature": 0.8}}
    try:
        conn.request("POST", "/api/generate", json.dumps(body), headers)
        r = conn.getresponse()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {r.read().decode()}")
        sid = r.getheader(SESSION) or session or ""
        for raw in r:
            msg = json.loads(raw)
            if msg["type"] == "error":
                raise RuntimeError(msg["error"])
            if msg["type"] == "done":
                return sid, msg
        raise RuntimeError("the stream ended without a done line")
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="run directory (default: train a small one)")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="grufinity-soak-")
    run = Path(args.run) if args.run else train_small(Path(tmp.name))
    proc, port = start_server(run, args.sessions, args.tokens)
    name = run.name
    try:
        generate(port, name, None, "\n", 50, 0)  # loads the model
        time.sleep(1)
        baseline = rss_mib(proc.pid)
        peak = [baseline]
        errors: list[str] = []
        results: list[list[dict[str, Any]]] = [[] for _ in range(args.sessions)]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                peak.append(rss_mib(proc.pid))

        def client(i: int) -> None:
            sid = None
            try:
                for r in range(args.rounds):
                    sid, last = generate(port, name, sid, "ROMEO:\n" if r == 0 else "\n", args.tokens, i)
                    results[i].append(last)
            except Exception as e:  # counted and reported
                errors.append(f"session {i}: {e}")

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        clients = [threading.Thread(target=client, args=(i,)) for i in range(args.sessions)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        elapsed = time.perf_counter() - t0
        done.set()
        sampler.join()
        time.sleep(1)
        after = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
        tmp.cleanup()

    generated = [sum(d["generated"] for d in rs) for rs in results]
    short = [i for i, rs in enumerate(results) if len(rs) != args.rounds or any(d["generated"] != args.tokens for d in rs)]
    growth = 100 * (after - baseline) / baseline
    print(f"model: {run} | server pid {proc.pid} | {os.cpu_count()} CPUs")
    print(f"{args.sessions} sessions x {args.rounds} rounds x {args.tokens} tokens: {sum(generated):,} tokens in {elapsed:.1f} s "
          f"({sum(generated) / elapsed:,.0f} tokens/s together)")
    for i, rs in enumerate(results):
        per = [d["ms_per_token"] for d in rs]
        print(f"  session {i}: {generated[i]:,} tokens, state {rs[-1]['tokens_seen'] if rs else 0:,} tokens, "
              f"ms/token per round {', '.join(f'{p:.3f}' for p in per)}")
    print(f"RSS: baseline {baseline:.1f} MiB, peak {max(peak):.1f} MiB, after {after:.1f} MiB ({growth:+.1f}%)")
    print(f"errors: {len(errors)}" + "".join(f"\n  {e}" for e in errors))
    failed = errors or short or growth > 10
    if short:
        print(f"sessions with missing tokens: {short}")
    print("FAIL" if failed else "PASS")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
