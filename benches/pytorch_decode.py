"""Greedy decoding speed of PyTorch + mingru-pytorch (``minLM.forward`` with its cached
``prev_hiddens``), shared by benches/decode_latency.py and benches/compare_workers.py. It does not
import GRUfinity, so a PyTorch worker's memory figures stay PyTorch's own."""

from __future__ import annotations

import copy
import time
import warnings
from typing import Any

#: Streams decoded together, and weight formats, in the batched decoding comparisons.
STREAMS = (1, 4, 16)
DTYPES = ("f32", "bf16", "int8")


def pytorch_model(dim: int, depth: int, dtype: str, model: Any = None) -> Any:
    """A PyTorch + mingru-pytorch model of the comparison architecture (``model``, or random
    weights) in ``dtype``: f32, bf16 (``model.to(torch.bfloat16)``) or int8
    (``torch.ao.quantization.quantize_dynamic`` of the Linear layers)."""
    import torch
    from minGRU_pytorch.minLM import minLM

    # quantize_dynamic still works in torch 2.x but warns that it moves to torchao.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
    if model is None:
        torch.manual_seed(0)
        model = minLM(num_tokens=256, dim=dim, depth=depth, ff_mult=4, expansion=1.5, enable_conv=False, dropout=0.0)
    model = copy.deepcopy(model).eval()
    if dtype == "bf16":
        return model.to(torch.bfloat16)
    if dtype == "int8":
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return model


def pytorch_rate(model: Any, streams: int, steps: int) -> float:
    """Greedy tokens/s of a PyTorch + mingru-pytorch ``model`` over all streams, all in one batch
    with the cached ``prev_hiddens`` (best of 2, at the faster of 1 and 2 threads)."""
    import torch

    threads = torch.get_num_threads()
    best = 0.0
    for n in (1, 2):
        torch.set_num_threads(n)
        for _ in range(2):
            tok = torch.full((streams, 1), ord("\n"))
            start = time.perf_counter()
            with torch.inference_mode():
                logits, hiddens = model(tok, return_prev_hiddens=True)
                for _ in range(steps - 1):
                    tok = logits[:, -1].argmax(-1, keepdim=True)
                    logits, hiddens = model(tok, return_prev_hiddens=True, prev_hiddens=hiddens)
            best = max(best, streams * steps / (time.perf_counter() - start))
    torch.set_num_threads(threads)
    return best
