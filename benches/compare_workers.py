"""The runs of benches/compare_pytorch.py, each in its own subprocess
(``compare_pytorch.py _worker SPEC.json RESULT.json``): GRUfinity training and decoding, PyTorch +
mingru-pytorch training (eager or ``torch.compile``d) and decoding, and the matmul peak."""

from __future__ import annotations

import datetime
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

from pytorch_decode import DTYPES, STREAMS, pytorch_model, pytorch_rate

#: Validation bytes (from the start of the held-out tail) on which the loss of the bf16-rounded
#: weights is compared with the f32 weights'.
BF16_EVAL_BYTES = 32768
MINGRU_PYTORCH_TESTED = "0.2.1"
#: Tokens per stream of the batched decoding measurements.
BATCHED_STEPS = 200
#: Single-stream decoding is timed this many times and the fastest counts: a 500-token run lasts
#: tens of milliseconds, so one run can catch a stray wake-up of another process.
DECODE_REPEATS = 3


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)



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
        best = math.inf
        for _ in range(DECODE_REPEATS):
            t0 = time.perf_counter()
            out, _state = m.generate_bytes("\n", max_new_tokens=n, temperature=0.0)
            best = min(best, time.perf_counter() - t0)
            if len(out) != n:
                raise RuntimeError(f"GRUfinity generated {len(out)} tokens, expected {n}")
        return best

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
    from decode_latency import grufinity_rate

    batched = {dtype: {streams: grufinity_rate(outcome["run_dir"], dtype, streams, BATCHED_STEPS) for streams in STREAMS}
               for dtype in DTYPES}
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
        "batched": batched,
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

    tag, budget, log_every, eval_every = spec["tag"], spec["budget"], spec["log_every"], spec["eval_every"]
    train_forward, compile_s = mingru_forward, 0.0
    if spec["compile"]:
        # torch.compile (inductor) of the training forward; its backward is compiled with it.
        # Compiled before the clock starts, on throwaway chunks, for both shapes of the carried
        # state (none at the start of an epoch, tensors after); no optimiser step, so the weights
        # stay untouched. Evaluation and decoding stay eager.
        train_forward = torch.compile(mingru_forward)
        t0 = time.perf_counter()
        warm_state, warm = None, train[: B * (T + 1)].view(B, T + 1)
        for _ in range(3):  # the same slicing as the loop below (strides are part of the guards)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["precision"] == "bf16"):
                logits, nxt = train_forward(model, layers, warm[:, :-1], warm_state)
                F.cross_entropy(logits.reshape(-1, V).float(), warm[:, 1:].reshape(-1)).backward()
            warm_state = [h.detach().float() for h in nxt]
        opt.zero_grad(set_to_none=True)
        compile_s = time.perf_counter() - t0
        log(f"  [{tag}] torch.compile: {compile_s:.0f} s before the budget")

    steps: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
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
            logits, nxt = train_forward(model, layers, seg[:, :-1], state)
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

    result = {
        "params": sum(p.numel() for p in params),
        "matmul_params": sum(p.numel() for p in linear_weights),
        "steps": steps,
        "evals": evals,
        "final_val_loss": v,
        "final_step": step,
        "train_elapsed": elapsed,
        "compile_s": compile_s,
        "train_rss_mib": train_rss,
        "import_rss_mib": import_rss,
        "device": "cpu",
        "version": f"torch {torch.__version__}, mingru-pytorch {version('mingru-pytorch')}",
    }
    if spec["compile"]:  # decoding is measured once, by the eager run
        return result

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

    def best_secs(run: Any) -> float:
        best = math.inf
        for _ in range(DECODE_REPEATS):
            t0 = time.perf_counter()
            assert len(run()) == n
            best = min(best, time.perf_counter() - t0)
        return best

    # One-token steps are tiny: PyTorch's OpenMP threads can cost more than they give (much
    # more on a busy machine), so PyTorch gets the faster of 1 thread and the run's threads.
    decode_s, decode_threads = math.inf, spec["threads"]
    for threads in sorted({1, spec["threads"]}):
        torch.set_num_threads(threads)
        decode(16)
        secs = best_secs(lambda: decode(n))
        if secs < decode_s:
            decode_s, decode_threads = secs, threads
    # Dynamic int8 quantisation of the Linear layers (int8 weights, activations quantised on the
    # fly), and the model in bfloat16, on the thread count that decoded faster in float32.
    converted = {dtype: pytorch_model(spec["dim"], spec["depth"], dtype, model) for dtype in DTYPES}
    torch.set_num_threads(decode_threads)
    decode_dtype_s = {}
    for dtype in ("bf16", "int8"):
        decode(16, converted[dtype])
        decode_dtype_s[dtype] = best_secs(lambda: decode(n, converted[dtype]))
    torch.set_num_threads(spec["threads"])
    batched = {dtype: {streams: pytorch_rate(converted[dtype], streams, BATCHED_STEPS) for streams in STREAMS}
               for dtype in DTYPES}
    return {
        **result,
        "decode_tokens": n,
        "decode_s": decode_s,
        "decode_bf16_s": decode_dtype_s["bf16"],
        "decode_int8_s": decode_dtype_s["int8"],
        "decode_threads": decode_threads,
        "batched": batched,
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

