"""GRUfinity against PyTorch + mingru-pytorch: the same minGRU language model, trained side by side.

Usage (after ``pip install -r benches/requirements.txt``, or ``pip install '.[bench]'``)::

    python benches/compare_pytorch.py                       # all configs, default budgets (~95 min)
    python benches/compare_pytorch.py --configs small --budget 20 --bf16-configs small   # a quick check
    python benches/compare_pytorch.py --update-readme        # also rewrite README's results table

Both frameworks train the same architecture (byte tokens, RMSNorm pre-norm blocks of a minGRU with
expansion 1.5 and a GELU feed-forward x4, no conv, untied head) on the same corpus
(``../shared/data/tinyshakespeare/input.txt`` relative to the repository root; validation = the
last 10%) with the same batching: B contiguous streams of the training tokens, chunks of T tokens,
the recurrent state carried (detached) from chunk to chunk, new random chunk offsets each epoch
(GRUfinity's own stream batcher, reimplemented here for PyTorch), AdamW with a constant learning
rate, decoupled weight decay on linear-layer matrices only, and global-norm gradient clipping.
Each run trains for a wall-clock budget, then evaluates on the validation tail (the same rows and
chunks for both: B contiguous regions, state carried) and times greedy decoding with the cached
state: one stream with f32, bf16 and int8 weights (PyTorch: ``quantize_dynamic``), and 1, 4 and 16
streams decoded together (``benches/decode_latency.py``'s measurements).

The runs of each config: GRUfinity, PyTorch eager and PyTorch with ``torch.compile`` (the training
forward and backward, compiled before the budget starts; it decodes eagerly, so its decoding is
not measured again), all with f32 products; for the configs of ``--bf16-configs`` also GRUfinity
``--precision bf16`` and PyTorch under ``torch.autocast("cpu", dtype=torch.bfloat16)``.

Every run is a separate subprocess (its peak RSS is that process's own, from ``wait4``); each repeat
runs a config's variants in the reverse order of the one before. Results: a table on stdout, ``benches/results.md`` (with the machine
and the date), ``benches/curves.csv`` (training and validation loss against time), and with
``--update-readme`` the section of README.md between ``<!-- bench:start -->`` and
``<!-- bench:end -->``.

FLOP utilisation = training tokens/s x 6 x matmul parameters / the machine's float32 matmul FLOP/s
(numpy's BLAS, 2048^3 products, on the same threads the runs use).

mingru-pytorch's ``minLM.forward(..., prev_hiddens=...)`` feeds only the *last* token of its input
(it is meant for one-token decoding), so it cannot carry state across training chunks. Training
and evaluation therefore run the package's own modules (``minLM.token_emb``, each layer's
``RMSNorm`` / ``minGRU`` / feed-forward, ``minLM.norm``, ``minLM.to_logits``) in the order
``minLM.forward`` runs them, passing each layer's previous hidden state to its ``minGRU`` (whose
parallel scan accepts it); decoding uses ``minLM.forward`` with ``prev_hiddens`` as published.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from compare_workers import BATCHED_STEPS, BF16_EVAL_BYTES, DECODE_REPEATS, MINGRU_PYTORCH_TESTED, log, worker_main

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
FRAMEWORKS = ("grufinity", "pytorch", "pytorch-compile")
#: Each run: (worker kind, torch.compile, training precision), by its name in the tables.
VARIANTS = {
    "grufinity": ("grufinity", False, "f32"),
    "pytorch": ("pytorch", False, "f32"),
    "pytorch-compile": ("pytorch", True, "f32"),
    "grufinity-bf16": ("grufinity", False, "bf16"),
    "pytorch-bf16": ("pytorch", False, "bf16"),
}
CONFIGS = {
    "small": {"dim": 128, "depth": 4},
    "reference": {"dim": 256, "depth": 4},
    "large": {"dim": 512, "depth": 6},
}
DEFAULT_BUDGETS = {"small": 60.0, "reference": 600.0, "large": 600.0}
README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


# --------------------------------------------------------------------------------------------
# Shared pieces: GRUfinity's stream batcher and validation layout, from GRUfinity itself.
# --------------------------------------------------------------------------------------------

#: Epochs of stream layout handed to the PyTorch worker (far more than any budget here uses).
LAYOUT_EPOCHS = 256


def data_layout(spec: dict[str, Any]) -> dict[str, Any]:
    """How GRUfinity's trainer reads ``spec``'s corpus: the training head, the stream starts of
    each epoch and the validation rows. Computed here, in the driver, so that the PyTorch worker
    reads the same tokens in the same order without loading GRUfinity into its own memory."""
    from grufinity import _grufinity as core

    n = Path(spec["data"]).stat().st_size  # byte tokens
    n_train = core.split_point(n, spec["val_fraction"])
    epochs = [core.epoch_layout(n_train, spec["batch"], spec["chunk"], spec["seed"], e) for e in range(LAYOUT_EPOCHS)]
    eval_starts, eval_per_row = core.eval_layout(n - n_train, spec["batch"], spec["eval_tokens"])
    return {"n_train": n_train, "epochs": epochs, "eval": [eval_starts, eval_per_row]}



def busy_cpus(seconds: float = 2.0) -> float:
    """How many CPUs other work keeps busy, measured over ``seconds`` from /proc/stat (NaN where
    absent). Unlike the load average, it does not remember the previous run's own threads."""

    def snapshot() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        return sum(fields), fields[3] + fields[4]  # all jiffies, idle + iowait

    try:
        total0, idle0 = snapshot()
        time.sleep(seconds)
        total1, idle1 = snapshot()
    except (OSError, ValueError, IndexError):
        return float("nan")
    total = total1 - total0
    return (os.cpu_count() or 1) * (total - (idle1 - idle0)) / total if total > 0 else 0.0


BUSY_LIMIT = 0.25  # CPUs of other work above which a run's timings are flagged



# --------------------------------------------------------------------------------------------
# The driver.
# --------------------------------------------------------------------------------------------


def run_worker(spec: dict[str, Any], work: Path, threads: int) -> tuple[dict[str, Any], float, float]:
    """Runs one worker subprocess; returns (its result, its peak RSS in MiB from wait4, wall s)."""
    spec_path = work / f"{spec['tag'].replace(' ', '_')}.spec.json"
    result_path = work / f"{spec['tag'].replace(' ', '_')}.result.json"
    if spec["kind"] == "pytorch":
        spec = {**spec, "layout": data_layout(spec)}
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    env = dict(os.environ)
    for var in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_worker", str(spec_path), str(result_path)], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"{spec['tag']}: worker failed (exit status {proc.returncode})")
    return json.loads(result_path.read_text()), usage.ru_maxrss / 1024, wall


def train_throughput(steps: list[dict[str, Any]]) -> float:
    """Tokens/s over the logged windows after the first one (step 1: warm-up), evaluations
    excluded (both trainers restart their window after an evaluation)."""
    total_tok, total_s, prev_tokens = 0.0, 0.0, None
    for s in steps:
        if prev_tokens is not None and s["step"] > 1:
            n = s["tokens"] - prev_tokens
            total_tok += n
            total_s += n / max(s["tokens_per_sec"], 1e-9)
        prev_tokens = s["tokens"]
    if total_s == 0 and steps:  # budget too small for a second window
        return steps[-1]["tokens_per_sec"]
    return total_tok / total_s if total_s else float("nan")


def machine_description() -> dict[str, str]:
    cpu, cores, flags = "unknown CPU", 0, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown CPU":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("processor"):
                cores += 1
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
    except OSError:
        pass
    simd = [f for f in ("avx512f", "avx2", "fma") if f in flags]
    return {
        "cpu": cpu,
        "cores": str(cores or os.cpu_count() or 0),
        "memory": mem,
        "simd": ", ".join(simd) or "-",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def summarize(runs: list[dict[str, Any]], peak_flops: float) -> dict[str, Any]:
    """Medians over the repeats of one variant and config."""

    def med(values: list[Any]) -> float:
        vals = [v for v in values if v is not None and not math.isnan(v)]
        return statistics.median(vals) if vals else float("nan")

    out: dict[str, Any] = {k: med([r.get(k) for r in runs]) for k in (
        "train_tps", "decode_tps", "decode_bf16_tps", "decode_int8_tps", "bf16_loss_delta", "int8_loss_delta", "rss_mib",
        "import_rss_mib", "val_loss", "steps", "params", "matmul_params", "compile_s")}
    out["flop_util"] = out["train_tps"] * 6 * out["matmul_params"] / peak_flops if peak_flops else float("nan")
    batched = [r["result"].get("batched") for r in runs if r["result"].get("batched")]
    out["batched"] = {dtype: {streams: med([b[dtype][streams] for b in batched]) for streams in batched[0][dtype]}
                      for dtype in batched[0]} if batched else {}
    return out


def _num(x: Optional[float], digits: int, percent: bool = False) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{100 * x:.{digits}f}%" if percent else f"{x:,.{digits}f}"


def results_table(summary: dict[str, dict[str, dict[str, Any]]], budgets: dict[str, float]) -> str:
    """One block of rows per config: GRUfinity, PyTorch eager, PyTorch with torch.compile, and
    GRUfinity against the best PyTorch figure of the row (speeds: a ratio; losses: a difference)."""
    lines = [
        "| config | metric | GRUfinity | PyTorch + mingru-pytorch | PyTorch, torch.compile | GRUfinity / best PyTorch |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, by in summary.items():
        g, p, pc = by.get("grufinity", {}), by.get("pytorch", {}), by.get("pytorch-compile", {})
        gb, pb = by.get("grufinity-bf16", {}), by.get("pytorch-bf16", {})
        c = CONFIGS[name]
        params = g.get("params", p.get("params", float("nan")))
        label = f"{name} (dim {c['dim']}, depth {c['depth']}, {params / 1e6:.2f}M params)"
        budget = f"{budgets[name]:g} s"
        # (metric, GRUfinity's, PyTorch's, compiled PyTorch's summary, key, digits, better)
        rows: list[tuple[str, dict, dict, dict, str, int, str]] = [
            ("training tokens/s", g, p, pc, "train_tps", 0, "higher"),
            ("training tokens/s, bf16 products (PyTorch: CPU autocast)", gb, pb, {}, "train_tps", 0, "higher"),
            ("decoding tokens/s (1 stream, cached state)", g, p, {}, "decode_tps", 0, "higher"),
            ("decoding tokens/s, bf16 weights", g, p, {}, "decode_bf16_tps", 0, "higher"),
            (f"bf16 weights' loss - f32 weights' loss ({BF16_EVAL_BYTES // 1024} KiB of validation)", g, {}, {}, "bf16_loss_delta", 4, ""),
            ("decoding tokens/s, int8 weights (PyTorch: quantize_dynamic)", g, p, {}, "decode_int8_tps", 0, "higher"),
            (f"int8 weights' loss - f32 weights' loss ({BF16_EVAL_BYTES // 1024} KiB of validation)", g, {}, {}, "int8_loss_delta", 4, ""),
            ("peak RSS, MiB", g, p, pc, "rss_mib", 0, "lower"),
            ("RSS after imports (part of the peak), MiB", g, p, pc, "import_rss_mib", 0, "lower"),
            (f"validation loss after {budget}, nats/byte", g, p, pc, "val_loss", 4, "diff"),
            (f"validation loss after {budget}, bf16 products", gb, pb, {}, "val_loss", 4, "diff"),
            ("optimiser steps in the budget", g, p, pc, "steps", 0, "higher"),
            ("FLOP utilisation (6 x matmul params x tokens/s)", g, p, pc, "flop_util", 1, "higher"),
        ]
        first = True
        for metric, gs, ps, pcs, key, digits, better in rows:
            gv, pv, pcv = gs.get(key), ps.get(key), pcs.get(key)
            if gv is None and pv is None:
                continue  # a variant this run did not train (bf16 off for this config)
            theirs = [v for v in (pv, pcv) if v is not None and not math.isnan(v)]
            ratio = ""
            if gv is not None and not math.isnan(gv) and theirs:
                if better == "diff":
                    ratio = f"{gv - min(theirs):+.4f} (diff)"
                elif better:
                    ratio = f"{gv / (max(theirs) if better == 'higher' else min(theirs)):.2f}x"
            if key == "train_tps" and gs is gb and gv is not None:
                fastest = max((v for v in (p.get(key), pc.get(key), pb.get(key)) if v is not None and not math.isnan(v)), default=None)
                if fastest:
                    ratio += f" ({gv / fastest:.2f}x the fastest PyTorch run, any precision)"
            percent = key == "flop_util"
            lines.append(f"| {label if first else ''} | {metric} | {_num(gv, digits, percent)} | {_num(pv, digits, percent)} "
                         f"| {_num(pcv, digits, percent)} | {ratio} |")
            first = False
        if pc.get("compile_s") is not None and not math.isnan(pc["compile_s"]):
            lines.append(f"|  | torch.compile time before the budget, s | - | - | {pc['compile_s']:.0f} |  |")
    return "\n".join(lines)


def batched_table(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Greedy decoding tokens/s summed over 1, 4 and 16 streams decoded together."""
    lines = ["| config | weights | GRUfinity tokens/s (1 / 4 / 16 streams) | PyTorch tokens/s (1 / 4 / 16) | GRUfinity / PyTorch |",
             "| --- | --- | ---: | ---: | ---: |"]
    for name, by in summary.items():
        g, p = by.get("grufinity", {}).get("batched", {}), by.get("pytorch", {}).get("batched", {})
        for i, dtype in enumerate(g or p):
            gs, ps = g.get(dtype, {}), p.get(dtype, {})
            streams = list(gs or ps)
            ratio = " / ".join(f"{gs[n] / ps[n]:.2f}x" if n in gs and n in ps else "-" for n in streams)
            lines.append(f"| {name if i == 0 else ''} | {dtype} | {' / '.join(_num(gs.get(n), 0) for n in streams)} | "
                         f"{' / '.join(_num(ps.get(n), 0) for n in streams)} | {ratio} |")
    return "\n".join(lines)


def write_curves(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["framework", "config", "run", "kind", "step", "tokens", "elapsed_s", "loss"])
        for r in records:
            for s in r["result"]["steps"]:
                w.writerow([r["framework"], r["config"], r["run"], "train", s["step"], s["tokens"], f"{s['elapsed']:.3f}", f"{s['loss']:.6f}"])
            last = None
            for e in r["result"]["evals"]:
                if e["step"] == last:  # evaluated again at the end of the budget: the same model
                    continue
                last = e["step"]
                w.writerow([r["framework"], r["config"], r["run"], "val", e["step"], e["tokens"], f"{e['elapsed']:.3f}", f"{e['val_loss']:.6f}"])


def update_readme(readme: Path, section: str) -> str:
    """Replaces the text between the bench markers (appending a section with them if absent)."""
    text = readme.read_text(encoding="utf-8") if readme.exists() else ""
    block = f"{README_START}\n{section.strip()}\n{README_END}"
    if README_START in text and README_END in text and text.index(README_START) < text.index(README_END):
        head, rest = text.split(README_START, 1)
        _, tail = rest.split(README_END, 1)
        new = head + block + tail
        how = "replaced the marked section"
    else:
        new = text.rstrip("\n") + "\n\n## Benchmarks\n\n" + block + "\n"
        how = "appended a Benchmarks section with the markers (none were present)"
    readme.write_text(new, encoding="utf-8")
    return how


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--configs", default="small,reference,large", help="comma-separated: " + ", ".join(CONFIGS))
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated: " + ", ".join(FRAMEWORKS))
    ap.add_argument("--budget", type=float, default=None, help="training seconds per run for every config (overrides the per-config budgets)")
    for name, secs in DEFAULT_BUDGETS.items():
        ap.add_argument(f"--budget-{name}", type=float, default=secs, help=f"training seconds per run of the {name} config")
    ap.add_argument("--repeats", type=int, default=1, help="runs per framework and config (alternating which goes first); medians are reported")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="corpus (byte tokens)")
    ap.add_argument("--batch", type=int, default=16, help="rows (streams) per step")
    ap.add_argument("--chunk", type=int, default=256, help="tokens per chunk (TBPTT length)")
    ap.add_argument("--val-fraction", type=float, default=0.1, help="held-out tail of the corpus")
    ap.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (constant, no warmup)")
    ap.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1")
    ap.add_argument("--beta2", type=float, default=0.99, help="AdamW beta2")
    ap.add_argument("--eps", type=float, default=1e-8, help="AdamW epsilon")
    ap.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decoupled decay on linear-layer matrices")
    ap.add_argument("--grad-clip", type=float, default=1.0, help="global gradient-norm clip (0 = off)")
    ap.add_argument("--seed", type=int, default=1337, help="seed of both frameworks (and of the epoch offsets)")
    ap.add_argument("--log-every", type=int, default=10, help="steps per throughput window and training-loss point")
    ap.add_argument("--eval-every", type=int, default=200, help="steps between validation points of the curves, rounded to a multiple of --log-every (0 = only after the budget); evaluation time counts against the budget for both")
    ap.add_argument("--eval-tokens", type=int, default=0, help="validation targets per evaluation (0 = the whole validation tail)")
    ap.add_argument("--decode-tokens", type=int, default=500, help="tokens generated for the decoding speed")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for both frameworks and the matmul peak")
    ap.add_argument("--device", default="cpu", help="GRUfinity device (PyTorch runs on the CPU)")
    ap.add_argument("--bf16-configs", default="large",
                    help="configs also trained with bf16 products: GRUfinity's --precision bf16 against PyTorch's "
                         "torch.autocast('cpu', dtype=torch.bfloat16) (comma-separated, '' for none)")
    ap.add_argument("--matmul-size", type=int, default=2048, help="side of the square float32 matmuls that measure the peak")
    ap.add_argument("--out", default=str(ROOT / "benches"), help="folder for results.md and curves.csv")
    ap.add_argument("--update-readme", action="store_true", help="rewrite README.md's section between the bench markers")
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--keep-runs", action="store_true", help="keep GRUfinity's run folders and the worker files (printed at the end)")
    args = ap.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    args.bf16_configs = [c.strip() for c in args.bf16_configs.split(",") if c.strip()]
    for c in args.configs + args.bf16_configs:
        if c not in CONFIGS:
            ap.error(f"unknown config {c!r} (choose from {', '.join(CONFIGS)})")
    for f in args.frameworks:
        if f not in FRAMEWORKS:
            ap.error(f"unknown framework {f!r} (choose from {', '.join(FRAMEWORKS)})")
    if args.repeats < 1 or args.log_every < 1 or args.eval_every < 0 or args.decode_tokens < 1:
        ap.error("--repeats, --log-every and --decode-tokens must be >= 1, --eval-every >= 0")
    if args.eval_every % args.log_every:
        args.eval_every = max(args.log_every, round(args.eval_every / args.log_every) * args.log_every)
    args.budgets = {c: (args.budget if args.budget is not None else getattr(args, f"budget_{c}")) for c in CONFIGS}
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1], argv[2])
    args = parse_args(argv)
    data = Path(args.data)
    if not data.is_file():
        print(f"skipped: the corpus {data} is absent", file=sys.stderr)
        return 0
    if any(f.startswith("pytorch") for f in args.frameworks):
        try:
            from importlib.metadata import version

            v = version("mingru-pytorch")
            version("torch")
        except Exception:
            print("skipped: PyTorch and mingru-pytorch are not installed (pip install -r benches/requirements.txt)", file=sys.stderr)
            return 0
        if v != MINGRU_PYTORCH_TESTED:
            log(f"note: mingru-pytorch {v} is installed; this script was checked against {MINGRU_PYTORCH_TESTED}")

    work_tmp = tempfile.TemporaryDirectory(prefix="grufinity-bench-")
    work = Path(work_tmp.name)
    machine = machine_description()
    started = datetime.datetime.now().astimezone()
    t_start = time.perf_counter()
    plan = [(name, v) for name in args.configs for v in args.frameworks]
    plan += [(name, f"{v}-bf16") for name in args.configs if name in args.bf16_configs
             for v in args.frameworks if f"{v}-bf16" in VARIANTS]
    total_budget = sum(args.budgets[name] for name, _ in plan) * args.repeats
    log(f"machine: {machine['cpu']}, {machine['cores']} cores; {len(plan) * args.repeats} runs, "
        f"{total_budget / 60:.1f} min of training budget")

    def matmul_peak() -> dict[str, Any]:
        fl, _, _ = run_worker({"kind": "flops", "tag": "flops", "n": args.matmul_size, "reps": 8}, work, args.threads)
        log(f"matmul peak: {fl['flops'] / 1e9:.1f} GFLOP/s (numpy {fl['numpy']}, {args.matmul_size}^3 float32, {args.threads} threads)")
        return fl

    fl = matmul_peak()

    records: list[dict[str, Any]] = []
    failed: list[str] = []
    versions: dict[str, str] = {}
    for name in args.configs:
        variants = [v for n, v in plan if n == name]
        for rep in range(args.repeats):
            for variant in variants if rep % 2 == 0 else reversed(variants):
                kind, compiled, precision = VARIANTS[variant]
                tag = f"{variant} {name} #{rep + 1}"
                spec = {
                    "kind": kind, "compile": compiled, "precision": precision, "tag": tag, "work_dir": str(work),
                    "run_name": f"{variant}-{name}-{rep + 1}",
                    "data": str(data.resolve()), "device": args.device, "threads": args.threads, "seed": args.seed,
                    **CONFIGS[name], "batch": args.batch, "chunk": args.chunk, "val_fraction": args.val_fraction,
                    "lr": args.lr, "beta1": args.beta1, "beta2": args.beta2, "eps": args.eps,
                    "weight_decay": args.weight_decay, "grad_clip": args.grad_clip, "budget": args.budgets[name],
                    "eval_every": args.eval_every, "eval_tokens": args.eval_tokens, "log_every": args.log_every,
                    "decode_tokens": args.decode_tokens,
                }
                busy = busy_cpus()
                log(f"{tag}: training for {args.budgets[name]:g} s (other work: {busy:.2f} CPUs busy)")
                if busy > BUSY_LIMIT:
                    log(f"  warning: the machine is busy ({busy:.2f} CPUs used by other work); it distorts these "
                        f"timings, PyTorch's OpenMP threads most of all")
                try:
                    result, rss, wall = run_worker(spec, work, args.threads)
                except RuntimeError as e:  # e.g. torch.compile where inductor cannot build: a "-" in the table
                    log(f"{e}; left out of the tables")
                    failed.append(tag)
                    continue
                versions[kind] = result["version"]

                def rate(key: str) -> Optional[float]:
                    return result["decode_tokens"] / result[key] if result.get(key) else None

                rec = {
                    "framework": variant, "config": name, "run": rep + 1, "result": result,
                    "train_tps": train_throughput(result["steps"]),
                    "decode_tps": rate("decode_s"),
                    "decode_bf16_tps": rate("decode_bf16_s"),
                    "decode_int8_tps": rate("decode_int8_s"),
                    "bf16_loss_delta": result.get("bf16_loss_delta"),
                    "int8_loss_delta": result.get("int8_loss_delta"),
                    "compile_s": result.get("compile_s") if compiled else None,
                    "rss_mib": rss,
                    "import_rss_mib": result["import_rss_mib"],
                    "val_loss": result["final_val_loss"],
                    "steps": result["final_step"],
                    "params": result["params"],
                    "matmul_params": result["matmul_params"],
                    "wall_s": wall,
                    "busy": busy,
                }
                records.append(rec)
                decoding = f", {rec['decode_tps']:,.0f} tok/s decoding" if rec["decode_tps"] else ""
                log(f"{tag}: {rec['train_tps']:,.0f} tok/s training{decoding}, peak RSS {rss:,.0f} MiB, "
                    f"val loss {rec['val_loss']:.4f} after {rec['steps']} steps ({wall:.0f} s wall)")
    # The peak is the best of a measurement before and one after the runs (a busy machine only
    # ever lowers it).
    fl2 = matmul_peak()
    peak = max(fl["flops"], fl2["flops"])
    for name in args.configs:
        counts = {r["framework"]: (r["params"], r["matmul_params"]) for r in records if r["config"] == name}
        if len(set(counts.values())) > 1:
            log(f"warning: {name}: parameter counts differ between frameworks: {counts}")

    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for name in args.configs:
        summary[name] = {v: summarize(rs, peak) for v in VARIANTS
                         if (rs := [r for r in records if r["config"] == name and r["framework"] == v])}
    table = results_table(summary, args.budgets)
    batched = batched_table(summary)
    print(table + "\n\n" + batched)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_curves(out / "curves.csv", records)
    date = started.strftime("%Y-%m-%d %H:%M %Z")
    machine_line = (f"{machine['cpu']}, {machine['cores']} cores ({machine['simd']}), {machine['memory']}, {machine['os']}, "
                    f"Python {machine['python']}")
    settings = (f"byte tokens of `{data.name}` (validation = last {args.val_fraction:.0%}), batch {args.batch}, chunk {args.chunk}, "
                f"state carried across chunks; AdamW lr {args.lr:g} constant, betas ({args.beta1:g}, {args.beta2:g}), "
                f"weight decay {args.weight_decay:g} on matrices, grad clip {args.grad_clip:g}; {args.threads} threads; "
                f"training products in f32, and for {', '.join(args.bf16_configs) or 'no config'} also in bf16 "
                f"(GRUfinity `--precision bf16`, f32 master weights; PyTorch `torch.autocast('cpu', dtype=torch.bfloat16)`); "
                f"torch.compile: the training forward and backward (inductor), compiled before the budget starts; "
                f"validation every {args.eval_every or 'never (only at the end)'} steps on "
                f"{'the whole validation tail' if args.eval_tokens == 0 else f'{args.eval_tokens:,} tokens'} (inside the budget); "
                f"decoding: {args.decode_tokens} greedy tokens after a 1-byte prompt, the fastest of {DECODE_REPEATS} runs (PyTorch: the faster of 1 and "
                f"{args.threads} threads; in bf16, `model.to(torch.bfloat16)` on that thread count; GRUfinity: "
                f"`grufinity.load(run, dtype=\"bf16\")`; int8: `torch.ao.quantization.quantize_dynamic` of the Linear layers "
                f"against `dtype=\"int8\"`); batched decoding: {BATCHED_STEPS} greedy tokens per stream, all streams in "
                f"one batch (GRUfinity `generate_batch`, PyTorch `minLM.forward` with `prev_hiddens`, the faster of 1 and 2 threads)")
    try:
        head_sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head_sha = "unknown"
    parts = []
    if "grufinity" in versions:
        parts.append(f"GRUfinity {versions['grufinity']}, repository at {head_sha}")
    if "pytorch" in versions:
        parts.append(versions["pytorch"])
    vers = "; ".join(parts)
    head = (f"Measured {date} on {machine_line}.\n\n"
            f"Matmul peak (numpy {fl['numpy']} BLAS, best of {args.matmul_size}^3 float32 products before and after the runs, "
            f"{args.threads} threads): {peak / 1e9:.1f} GFLOP/s. "
            f"Versions: {vers}.\n\nSettings: {settings}.")
    raw = ["| run | config | # | training tok/s | decoding tok/s (threads) | peak RSS MiB | RSS after imports MiB | val loss | steps | wall s | CPUs busy before |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        decoding = f"{r['decode_tps']:,.0f} ({r['result']['decode_threads']})" if r["decode_tps"] else "-"
        raw.append(f"| {r['framework']} | {r['config']} | {r['run']} | {r['train_tps']:,.0f} | {decoding} "
                   f"| {r['rss_mib']:,.0f} | {r['import_rss_mib']:,.0f} | {r['val_loss']:.4f} | "
                   f"{r['steps']} | {r['wall_s']:.0f} | {r['busy']:.2f} |")
    cmd = "python benches/compare_pytorch.py " + " ".join(argv)
    if failed:
        head += f"\n\n**Failed runs** (left out; see the log): {', '.join(failed)}."
    busy = [r for r in records if r["busy"] > BUSY_LIMIT]
    if busy:
        head += (f"\n\n**Warning:** {len(busy)} of {len(records)} runs started on a busy machine (up to "
                 f"{max(r['busy'] for r in busy):.2f} CPUs used by other work); their timings are distorted.")
    legend = ("Ratios are GRUfinity / the better PyTorch figure of the row (the validation loss rows give the "
              f"difference; lower is better for loss and RSS). Medians over {args.repeats} run(s) each.")
    tables = f"{table}\n\nBatched decoding (greedy tokens/s over all streams):\n\n{batched}\n\n{legend}"
    results_md = (f"# GRUfinity vs PyTorch + mingru-pytorch\n\nGenerated by `{cmd.strip()}` (do not edit by hand).\n\n"
                  f"{head}\n\n{tables}\n\n## Runs\n\n" + "\n".join(raw) +
                  "\n\nLoss against time: `benches/curves.csv` (kind `train`: training loss of a logged step; `val`: validation loss).\n")
    (out / "results.md").write_text(results_md, encoding="utf-8")
    log(f"wrote {out / 'results.md'} and {out / 'curves.csv'} ({(time.perf_counter() - t_start) / 60:.1f} min in all)")
    if args.update_readme:
        section = (f"GRUfinity against PyTorch + mingru-pytorch, generated by `benches/compare_pytorch.py` "
                   f"(details and per-run numbers in `benches/results.md`). {head}\n\n{tables}\n")
        how = update_readme(Path(args.readme), section)
        log(f"{args.readme}: {how}")
    if args.keep_runs:
        work_tmp._finalizer.detach()  # type: ignore[attr-defined]
        log(f"kept the runs in {work}")
    else:
        work_tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
