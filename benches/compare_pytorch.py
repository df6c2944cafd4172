"""GRUfinity against PyTorch + mingru-pytorch: the same minGRU language model, trained side by side.

Usage (after ``pip install -r benches/requirements.txt``, or ``pip install '.[bench]'``)::

    python benches/compare_pytorch.py                       # all configs, default budgets (~28 min)
    python benches/compare_pytorch.py --configs small --budget 20      # a quick check
    python benches/compare_pytorch.py --update-readme        # also rewrite README's results table

Both frameworks train the same architecture (byte tokens, RMSNorm pre-norm blocks of a minGRU with
expansion 1.5 and a GELU feed-forward x4, no conv, untied head) on the same corpus
(``../shared/data/tinyshakespeare/input.txt`` relative to the repository root; validation = the
last 10%) with the same batching: B contiguous streams of the training tokens, chunks of T tokens,
the recurrent state carried (detached) from chunk to chunk, new random chunk offsets each epoch
(GRUfinity's own stream batcher, reimplemented here for PyTorch), AdamW with a constant learning
rate, decoupled weight decay on linear-layer matrices only, and global-norm gradient clipping.
Each run trains for a wall-clock budget, then evaluates on the validation tail (the same rows and
chunks for both: B contiguous regions, state carried) and times single-stream greedy decoding with
the cached state, with the f32 weights and again in bfloat16.

Every run is a separate subprocess (its peak RSS is that process's own, from ``wait4``); runs of
the two frameworks alternate. Results: a table on stdout, ``benches/results.md`` (with the machine
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

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
FRAMEWORKS = ("grufinity", "pytorch")
CONFIGS = {
    "small": {"dim": 128, "depth": 4},
    "reference": {"dim": 256, "depth": 4},
    "large": {"dim": 512, "depth": 6},
}
DEFAULT_BUDGETS = {"small": 60.0, "reference": 600.0, "large": 100.0}
#: Validation bytes (from the start of the held-out tail) on which the loss of the bf16-rounded
#: weights is compared with the f32 weights'.
BF16_EVAL_BYTES = 32768
README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"
MINGRU_PYTORCH_TESTED = "0.2.1"


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


def peak_rss_self_mib() -> float:
    """This process' peak resident set so far (VmHWM), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Workers (each run is a subprocess: `compare_pytorch.py _worker SPEC.json RESULT.json`).
# --------------------------------------------------------------------------------------------


def worker_grufinity(spec: dict[str, Any]) -> dict[str, Any]:
    import grufinity

    import_rss = peak_rss_self_mib()

    work = Path(spec["work_dir"])
    options = dict(
        data=[spec["data"]],
        out_dir=str(work / "runs"),
        name=spec["run_name"],
        device=spec["device"],
        seed=spec["seed"],
        dim=spec["dim"],
        depth=spec["depth"],
        expansion=1.5,
        ff_mult=4.0,
        ff_kind="gelu",
        conv_kernel=0,
        tie_embeddings=False,
        dropout=0.0,
        tokenizer="byte",
        cache_dir=str(work / "cache"),
        batch_size=spec["batch"],
        chunk_len=spec["chunk"],
        val_fraction=spec["val_fraction"],
        lr=spec["lr"],
        warmup=0,
        schedule="constant",
        weight_decay=spec["weight_decay"],
        beta1=spec["beta1"],
        beta2=spec["beta2"],
        eps=spec["eps"],
        grad_clip=spec["grad_clip"],
        max_steps=None,
        max_time=spec["budget"],
        eval_every=spec["eval_every"],
        eval_tokens=spec["eval_tokens"],
        save_every=0,
        keep_last=1,
        log_every=spec["log_every"],
        sample_tokens=0,
        precision=spec["precision"],
    )
    cfg = grufinity.TrainConfig(**options)
    steps: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    tag = spec["tag"]

    def on_event(e: dict[str, Any]) -> None:
        kind = e.get("event")
        if kind == "start":
            info.update(params=e["params"], device=e["device"], train_tokens=e["train_tokens"], val_tokens=e["val_tokens"])
        elif kind == "step":
            steps.append({k: e[k] for k in ("step", "tokens", "loss", "tokens_per_sec", "elapsed")})
        elif kind == "eval":
            evals.append({k: e[k] for k in ("step", "tokens", "val_loss", "elapsed")})
            log(f"  [{tag}] step {e['step']:>6}  {e['elapsed']:7.1f} s  val loss {e['val_loss']:.4f}")
        elif kind == "done":
            info.update(done_elapsed=e["elapsed"], done_step=e["step"], done_tokens=e["tokens"])

    ext = Path(grufinity._grufinity.__file__)
    built = datetime.datetime.fromtimestamp(ext.stat().st_mtime).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    outcome = grufinity.train(cfg, on_event)
    train_rss = peak_rss_self_mib()
    model = grufinity.load(outcome["run_dir"], device=spec["device"])
    matmul = sum(int(a.size) for name, a in model.parameters().items() if a.ndim == 2 and "embedding" not in name)
    # Decoding: single stream, greedy, the state cached between tokens (inside generate).
    model.generate("\n", max_new_tokens=16, temperature=0.0)
    n = spec["decode_tokens"]

    def decode_secs(m: Any) -> float:
        t0 = time.perf_counter()
        out, _state = m.generate_bytes("\n", max_new_tokens=n, temperature=0.0)
        secs = time.perf_counter() - t0
        if len(out) != n:
            raise RuntimeError(f"GRUfinity generated {len(out)} tokens, expected {n}")
        return secs

    decode_s = decode_secs(model)
    # The same weights rounded to bfloat16 (`dtype="bf16"`): speed, and what it costs in loss.
    bf16 = grufinity.load(outcome["run_dir"], device=spec["device"], dtype="bf16")
    bf16.generate("\n", max_new_tokens=16, temperature=0.0)
    decode_bf16_s = decode_secs(bf16)
    # And as int8 (per-output-channel scales, `dtype="int8"`).
    int8 = grufinity.load(outcome["run_dir"], device=spec["device"], dtype="int8")
    int8.generate("\n", max_new_tokens=16, temperature=0.0)
    decode_int8_s = decode_secs(int8)
    raw = Path(spec["data"]).read_bytes()
    val = raw[grufinity._grufinity.split_point(len(raw), spec["val_fraction"]):][:BF16_EVAL_BYTES]
    f32_loss = model.evaluate(val)["loss"]
    bf16_loss_delta = bf16.evaluate(val)["loss"] - f32_loss
    int8_loss_delta = int8.evaluate(val)["loss"] - f32_loss
    return {
        "params": model.num_params,
        "matmul_params": matmul,
        "steps": steps,
        "evals": evals,
        "final_val_loss": outcome["final_val_loss"],
        "final_step": outcome["step"],
        "train_elapsed": info.get("done_elapsed"),
        "decode_tokens": n,
        "decode_s": decode_s,
        "decode_bf16_s": decode_bf16_s,
        "decode_int8_s": decode_int8_s,
        "bf16_loss_delta": bf16_loss_delta,
        "int8_loss_delta": int8_loss_delta,
        "train_rss_mib": train_rss,
        "import_rss_mib": import_rss,
        "decode_threads": spec["threads"],
        "device": info.get("device"),
        "version": f"{grufinity.__version__} (extension built {built})",
    }


def _mingru_layers(model: Any) -> list[tuple[Any, ...]]:
    """The layers of a ``minLM`` as (norm, mingru, ff_norm, ff); checks the layout this driver
    assumes (mingru-pytorch 0.2.x: conv, norm, minGRU, norm, feed-forward, dropout)."""
    layers = []
    for layer in model.layers:
        parts = list(layer)
        if len(parts) != 6 or parts[0] is not None or parts[5] is not None:
            raise RuntimeError(
                f"unexpected minLM layer layout {[type(p).__name__ for p in parts]}; this driver was "
                f"written for mingru-pytorch {MINGRU_PYTORCH_TESTED} (no conv, no dropout)"
            )
        layers.append((parts[1], parts[2], parts[3], parts[4]))
    return layers


def mingru_forward(model: Any, layers: list[tuple[Any, ...]], tokens: Any, prev: Optional[list[Any]]) -> tuple[Any, list[Any]]:
    """``minLM.forward`` for a whole chunk continuing the per-layer hidden states ``prev`` (None =
    from the start): the package's own modules, in its order. Returns (logits, next hiddens)."""
    x = model.token_emb(tokens)
    nxt = []
    for i, (norm, mingru, ff_norm, ff) in enumerate(layers):
        out, h = mingru(norm(x), None if prev is None else prev[i], return_next_prev_hidden=True)
        x = out + x
        nxt.append(h)
        x = ff(ff_norm(x)) + x
    return model.to_logits(model.norm(x)), nxt


def worker_pytorch(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from importlib.metadata import version

    from minGRU_pytorch.minLM import minLM

    import_rss = peak_rss_self_mib()
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    raw = np.frombuffer(Path(spec["data"]).read_bytes(), dtype=np.uint8)
    data = torch.from_numpy(raw.astype(np.int64))
    layout = spec["layout"]
    n_train = layout["n_train"]
    train, val = data[:n_train], data[n_train:]
    B, T, V = spec["batch"], spec["chunk"], 256
    model = minLM(num_tokens=V, dim=spec["dim"], depth=spec["depth"], ff_mult=4, expansion=1.5, enable_conv=False, dropout=0.0)
    layers = _mingru_layers(model)
    linear_weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    decay_ids = {id(p) for p in linear_weights}
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if id(p) in decay_ids], "weight_decay": spec["weight_decay"]},
        {"params": [p for p in params if id(p) not in decay_ids], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=spec["lr"], betas=(spec["beta1"], spec["beta2"]), eps=spec["eps"])

    def evaluate() -> float:
        starts, per_row = layout["eval"]
        rows = torch.tensor(starts)
        state, total, count, pos = None, 0.0, 0, 0
        model.eval()
        with torch.inference_mode():
            while pos < per_row:
                t = min(T, per_row - pos)
                idx = rows[:, None] + pos + torch.arange(t + 1)
                seg = val[idx]
                logits, state = mingru_forward(model, layers, seg[:, :-1], state)
                loss = F.cross_entropy(logits.reshape(-1, V), seg[:, 1:].reshape(-1))
                total += loss.item() * seg.shape[0] * t
                count += seg.shape[0] * t
                pos += t
        model.train()
        return total / max(count, 1)

    steps: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    tag, budget, log_every, eval_every = spec["tag"], spec["budget"], spec["log_every"], spec["eval_every"]
    epoch, epoch_step = 0, 0
    starts, per_epoch = layout["epochs"][epoch]
    arange = torch.arange(T + 1)
    state: Optional[list[Any]] = None
    step, tokens = 0, 0
    clock = time.perf_counter()
    window_t, window_tok = time.perf_counter(), 0
    elapsed = 0.0
    while time.perf_counter() - clock < budget:
        if epoch_step >= per_epoch:
            epoch, epoch_step = epoch + 1, 0
            starts, per_epoch = layout["epochs"][epoch]
        if epoch_step == 0:
            state = None  # every stream starts a new region
        idx = torch.tensor(starts)[:, None] + epoch_step * T + arange
        seg = train[idx]
        epoch_step += 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["precision"] == "bf16"):
            logits, nxt = mingru_forward(model, layers, seg[:, :-1], state)
            loss = F.cross_entropy(logits.reshape(-1, V).float(), seg[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(f"PyTorch loss is {value} at step {step + 1}")
        if spec["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, spec["grad_clip"])
        opt.step()
        state = [h.detach().float() for h in nxt]
        step += 1
        tokens += B * T
        window_tok += B * T
        elapsed = time.perf_counter() - clock
        if step % log_every == 0 or step == 1:
            now = time.perf_counter()
            steps.append({"step": step, "tokens": tokens, "loss": value, "tokens_per_sec": window_tok / max(now - window_t, 1e-9), "elapsed": elapsed})
            window_t, window_tok = now, 0
        if eval_every > 0 and step % eval_every == 0:
            v = evaluate()
            evals.append({"step": step, "tokens": tokens, "val_loss": v, "elapsed": elapsed})
            log(f"  [{tag}] step {step:>6}  {elapsed:7.1f} s  val loss {v:.4f}")
            window_t, window_tok = time.perf_counter(), 0
    if evals and evals[-1]["step"] == step:  # the budget ran out during an evaluation
        v = evals[-1]["val_loss"]
    else:
        v = evaluate()
        evals.append({"step": step, "tokens": tokens, "val_loss": v, "elapsed": elapsed})
        log(f"  [{tag}] step {step:>6}  {elapsed:7.1f} s  val loss {v:.4f}")
    train_rss = peak_rss_self_mib()

    # Decoding: single stream, greedy, minLM.forward with the cached prev_hiddens.
    model.eval()
    n = spec["decode_tokens"]

    def decode(count: int, model: Any = model) -> list[int]:
        out: list[int] = []
        with torch.inference_mode():
            logits, hiddens = model(torch.tensor([[ord("\n")]]), return_prev_hiddens=True)
            tok = logits[:, -1].argmax(-1, keepdim=True)
            out.append(int(tok.item()))
            while len(out) < count:
                logits, hiddens = model(tok, return_prev_hiddens=True, prev_hiddens=hiddens)
                tok = logits[:, -1].argmax(-1, keepdim=True)
                out.append(int(tok.item()))
        return out

    # One-token steps are tiny: PyTorch's OpenMP threads can cost more than they give (much
    # more on a busy machine), so PyTorch gets the faster of 1 thread and the run's threads.
    decode_s, decode_threads = math.inf, spec["threads"]
    for threads in sorted({1, spec["threads"]}):
        torch.set_num_threads(threads)
        decode(16)
        t0 = time.perf_counter()
        out = decode(n)
        secs = time.perf_counter() - t0
        assert len(out) == n
        if secs < decode_s:
            decode_s, decode_threads = secs, threads
    # Dynamic int8 quantisation of the Linear layers (int8 weights, activations quantised on the
    # fly), then the model in bfloat16, on the thread count that decoded faster in float32.
    torch.set_num_threads(decode_threads)
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # quantize_dynamic moves to torchao
    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
    model_int8 = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    decode(16, model_int8)
    t0 = time.perf_counter()
    assert len(decode(n, model_int8)) == n
    decode_int8_s = time.perf_counter() - t0
    model_bf16 = model.to(torch.bfloat16)
    decode(16, model_bf16)
    t0 = time.perf_counter()
    assert len(decode(n, model_bf16)) == n
    decode_bf16_s = time.perf_counter() - t0
    torch.set_num_threads(spec["threads"])
    return {
        "params": sum(p.numel() for p in params),
        "matmul_params": sum(p.numel() for p in linear_weights),
        "steps": steps,
        "evals": evals,
        "final_val_loss": v,
        "final_step": step,
        "train_elapsed": elapsed,
        "decode_tokens": n,
        "decode_s": decode_s,
        "decode_bf16_s": decode_bf16_s,
        "decode_int8_s": decode_int8_s,
        "train_rss_mib": train_rss,
        "import_rss_mib": import_rss,
        "decode_threads": decode_threads,
        "device": "cpu",
        "version": f"torch {torch.__version__}, mingru-pytorch {version('mingru-pytorch')}",
    }


def worker_flops(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    n, reps = spec["n"], spec["reps"]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=c)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return {"flops": 2.0 * n**3 / best, "n": n, "seconds": best, "numpy": np.__version__}


def worker_main(spec_path: str, result_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    fn = {"grufinity": worker_grufinity, "pytorch": worker_pytorch, "flops": worker_flops}[spec["kind"]]
    result = fn(spec)
    Path(result_path).write_text(json.dumps(result))
    return 0


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


def fmt_num(x: Optional[float], digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}"


def fmt_ratio(a: Optional[float], b: Optional[float]) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}x"


def summarize(runs: list[dict[str, Any]], peak_flops: float) -> dict[str, float]:
    """Medians over the repeats of one framework and config."""

    def med(key: str) -> float:
        vals = [r[key] for r in runs if r.get(key) is not None and not math.isnan(r[key])]
        return statistics.median(vals) if vals else float("nan")

    out = {k: med(k) for k in ("train_tps", "decode_tps", "decode_bf16_tps", "decode_int8_tps", "bf16_loss_delta",
                               "int8_loss_delta", "rss_mib", "import_rss_mib",
                               "val_loss", "steps", "params", "matmul_params")}
    out["flop_util"] = out["train_tps"] * 6 * out["matmul_params"] / peak_flops if peak_flops else float("nan")
    return out


def results_table(summary: dict[str, dict[str, dict[str, float]]], budgets: dict[str, float]) -> str:
    lines = [
        "| config | metric | GRUfinity | PyTorch + mingru-pytorch | GRUfinity / PyTorch |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, by_fw in summary.items():
        g, p = by_fw.get("grufinity", {}), by_fw.get("pytorch", {})
        c = CONFIGS[name]
        params = g.get("params", p.get("params", float("nan")))
        label = f"{name} (dim {c['dim']}, depth {c['depth']}, {params / 1e6:.2f}M params)"
        rows = [
            ("training tokens/s", "train_tps", 0, "higher is better"),
            ("decoding tokens/s (1 stream, cached state)", "decode_tps", 0, ""),
            ("decoding tokens/s, bf16 weights", "decode_bf16_tps", 0, ""),
            (f"bf16 weights' loss - f32 weights' loss ({BF16_EVAL_BYTES // 1024} KiB of validation)", "bf16_loss_delta", 4, ""),
            ("decoding tokens/s, int8 weights (PyTorch: quantize_dynamic)", "decode_int8_tps", 0, ""),
            (f"int8 weights' loss - f32 weights' loss ({BF16_EVAL_BYTES // 1024} KiB of validation)", "int8_loss_delta", 4, ""),
            ("peak RSS, MiB", "rss_mib", 0, ""),
            ("RSS after imports (part of the peak), MiB", "import_rss_mib", 0, ""),
            (f"validation loss after {budgets[name]:g} s, nats/byte", "val_loss", 4, ""),
            ("optimiser steps in the budget", "steps", 0, ""),
            ("FLOP utilisation (6 x matmul params x tokens/s)", "flop_util", 1, ""),
        ]
        for i, (metric, key, digits, _) in enumerate(rows):
            gv, pv = g.get(key), p.get(key)
            if key == "flop_util":
                gs = "-" if gv is None or math.isnan(gv) else f"{100 * gv:.{digits}f}%"
                ps = "-" if pv is None or math.isnan(pv) else f"{100 * pv:.{digits}f}%"
            else:
                gs, ps = fmt_num(gv, digits), fmt_num(pv, digits)
            ratio = fmt_ratio(gv, pv) if not key.endswith("_loss_delta") else ""
            if key == "val_loss" and gv is not None and pv is not None and not math.isnan(gv) and not math.isnan(pv):
                ratio = f"{gv - pv:+.4f} (diff)"
            lines.append(f"| {label if i == 0 else ''} | {metric} | {gs} | {ps} | {ratio} |")
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
    ap.add_argument("--frameworks", default="grufinity,pytorch", help="comma-separated: " + ", ".join(FRAMEWORKS))
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
    ap.add_argument("--precision", choices=("f32", "bf16"), default="f32",
                    help="training products: bf16 is GRUfinity's --precision bf16 against PyTorch's "
                         "torch.autocast('cpu', dtype=torch.bfloat16); results go to results-bf16.md and the README is left alone")
    ap.add_argument("--matmul-size", type=int, default=2048, help="side of the square float32 matmuls that measure the peak")
    ap.add_argument("--out", default=str(ROOT / "benches"), help="folder for results.md and curves.csv")
    ap.add_argument("--update-readme", action="store_true", help="rewrite README.md's section between the bench markers")
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--keep-runs", action="store_true", help="keep GRUfinity's run folders and the worker files (printed at the end)")
    args = ap.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    for c in args.configs:
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
    if "pytorch" in args.frameworks:
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
    total_budget = sum(args.budgets[c] for c in args.configs) * len(args.frameworks) * args.repeats
    log(f"machine: {machine['cpu']}, {machine['cores']} cores; {len(args.configs) * len(args.frameworks) * args.repeats} runs, "
        f"{total_budget / 60:.1f} min of training budget")

    def matmul_peak() -> dict[str, Any]:
        fl, _, _ = run_worker({"kind": "flops", "tag": "flops", "n": args.matmul_size, "reps": 8}, work, args.threads)
        log(f"matmul peak: {fl['flops'] / 1e9:.1f} GFLOP/s (numpy {fl['numpy']}, {args.matmul_size}^3 float32, {args.threads} threads)")
        return fl

    fl = matmul_peak()

    records: list[dict[str, Any]] = []
    versions: dict[str, str] = {}
    for name in args.configs:
        for rep in range(args.repeats):
            order = list(args.frameworks) if rep % 2 == 0 else list(reversed(args.frameworks))
            for fw in order:
                tag = f"{fw} {name} #{rep + 1}"
                spec = {
                    "kind": fw, "tag": tag, "work_dir": str(work), "run_name": f"{fw}-{name}-{rep + 1}",
                    "data": str(data.resolve()), "device": args.device, "threads": args.threads, "seed": args.seed,
                    **CONFIGS[name], "batch": args.batch, "chunk": args.chunk, "val_fraction": args.val_fraction,
                    "lr": args.lr, "beta1": args.beta1, "beta2": args.beta2, "eps": args.eps,
                    "weight_decay": args.weight_decay, "grad_clip": args.grad_clip, "budget": args.budgets[name],
                    "eval_every": args.eval_every, "eval_tokens": args.eval_tokens, "log_every": args.log_every,
                    "decode_tokens": args.decode_tokens, "precision": args.precision,
                }
                busy = busy_cpus()
                log(f"{tag}: training for {args.budgets[name]:g} s (other work: {busy:.2f} CPUs busy)")
                if busy > BUSY_LIMIT:
                    log(f"  warning: the machine is busy ({busy:.2f} CPUs used by other work); it distorts these "
                        f"timings, PyTorch's OpenMP threads most of all")
                result, rss, wall = run_worker(spec, work, args.threads)
                versions[fw] = result["version"]
                rec = {
                    "framework": fw, "config": name, "run": rep + 1, "result": result,
                    "train_tps": train_throughput(result["steps"]),
                    "decode_tps": result["decode_tokens"] / result["decode_s"],
                    "decode_bf16_tps": result["decode_tokens"] / result["decode_bf16_s"],
                    "decode_int8_tps": result["decode_tokens"] / result["decode_int8_s"],
                    "bf16_loss_delta": result.get("bf16_loss_delta"),
                    "int8_loss_delta": result.get("int8_loss_delta"),
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
                log(f"{tag}: {rec['train_tps']:,.0f} tok/s training, {rec['decode_tps']:,.0f} tok/s decoding "
                    f"({rec['decode_bf16_tps']:,.0f} with bf16 weights), "
                    f"peak RSS {rss:,.0f} MiB, val loss {rec['val_loss']:.4f} after {rec['steps']} steps ({wall:.0f} s wall)")
    # The peak is the best of a measurement before and one after the runs (a busy machine only
    # ever lowers it).
    fl2 = matmul_peak()
    peak = max(fl["flops"], fl2["flops"])
    for name in args.configs:
        counts = {r["framework"]: (r["params"], r["matmul_params"]) for r in records if r["config"] == name}
        if len(set(counts.values())) > 1:
            log(f"warning: {name}: parameter counts differ between frameworks: {counts}")

    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name in args.configs:
        summary[name] = {fw: summarize([r for r in records if r["config"] == name and r["framework"] == fw], peak) for fw in args.frameworks}
    table = results_table(summary, args.budgets)
    print(table)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.precision == "f32" else f"-{args.precision}"
    write_curves(out / f"curves{suffix}.csv", records)
    date = started.strftime("%Y-%m-%d %H:%M %Z")
    machine_line = (f"{machine['cpu']}, {machine['cores']} cores ({machine['simd']}), {machine['memory']}, {machine['os']}, "
                    f"Python {machine['python']}")
    settings = (f"byte tokens of `{data.name}` (validation = last {args.val_fraction:.0%}), batch {args.batch}, chunk {args.chunk}, "
                f"state carried across chunks; training products in {args.precision}"
                f"{' (PyTorch: CPU autocast)' if args.precision == 'bf16' else ''}; AdamW lr {args.lr:g} constant, betas ({args.beta1:g}, {args.beta2:g}), "
                f"weight decay {args.weight_decay:g} on matrices, grad clip {args.grad_clip:g}; {args.threads} threads; "
                f"validation every {args.eval_every or 'never (only at the end)'} steps on "
                f"{'the whole validation tail' if args.eval_tokens == 0 else f'{args.eval_tokens:,} tokens'} (inside the budget); "
                f"decoding: {args.decode_tokens} greedy tokens after a 1-byte prompt (PyTorch: the faster of 1 and "
                f"{args.threads} threads; in bf16, `model.to(torch.bfloat16)` on that thread count; GRUfinity: "
                f"`grufinity.load(run, dtype=\"bf16\")`; int8: `torch.ao.quantization.quantize_dynamic` of the Linear layers "
                f"against `dtype=\"int8\"`)")
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
    raw = ["| framework | config | run | training tok/s | decoding tok/s (threads) | peak RSS MiB | RSS after imports MiB | val loss | steps | wall s | CPUs busy before |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        raw.append(f"| {r['framework']} | {r['config']} | {r['run']} | {r['train_tps']:,.0f} | {r['decode_tps']:,.0f} "
                   f"({r['result']['decode_threads']}) | {r['rss_mib']:,.0f} | {r['import_rss_mib']:,.0f} | {r['val_loss']:.4f} | "
                   f"{r['steps']} | {r['wall_s']:.0f} | {r['busy']:.2f} |")
    cmd = "python benches/compare_pytorch.py " + " ".join(argv)
    busy = [r for r in records if r["busy"] > BUSY_LIMIT]
    if busy:
        head += (f"\n\n**Warning:** {len(busy)} of {len(records)} runs started on a busy machine (up to "
                 f"{max(r['busy'] for r in busy):.2f} CPUs used by other work); their timings are distorted.")
    results_md = (f"# GRUfinity vs PyTorch + mingru-pytorch\n\nGenerated by `{cmd.strip()}` (do not edit by hand).\n\n"
                  f"{head}\n\n{table}\n\nRatios are GRUfinity / PyTorch (the validation loss row gives the difference; lower "
                  f"is better for loss and RSS). Medians over {args.repeats} run(s) each.\n\n## Runs\n\n" + "\n".join(raw) +
                  "\n\nLoss against time: `benches/curves.csv` (kind `train`: training loss of a logged step; `val`: validation loss).\n")
    (out / f"results{suffix}.md").write_text(results_md, encoding="utf-8")
    log(f"wrote {out / f'results{suffix}.md'} and {out / f'curves{suffix}.csv'} ({(time.perf_counter() - t_start) / 60:.1f} min in all)")
    if args.update_readme and args.precision == "f32":
        section = (f"GRUfinity against PyTorch + mingru-pytorch, generated by `benches/compare_pytorch.py` "
                   f"(details and per-run numbers in `benches/results.md`). {head}\n\n{table}\n")
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
