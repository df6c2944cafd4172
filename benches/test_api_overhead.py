"""Python API overhead of a tiny trained model: forward calls and generate calls.

Run with pytest-benchmark (a benchmark extra, ``pip install -r benches/requirements.txt``)::

    pytest benches/test_api_overhead.py

This file lives outside ``tests/`` (the test suite's ``testpaths``), so a plain ``pytest`` never
collects it. The model is tiny so that the numbers are dominated by the cost of crossing the
Python/Rust boundary (argument conversion, state handles, result arrays) rather than by compute.
"""

from __future__ import annotations


import numpy as np
import pytest

grufinity = pytest.importorskip("grufinity")
pytest.importorskip("pytest_benchmark")

WORDS = (
    "the king is dead long live the king who comes here my lord a horse a horse my kingdom "
    "for a horse now is the winter of our discontent made glorious summer by this sun of york"
).split()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    """A tiny model (dim 32, depth 2) trained for a few steps on a generated corpus."""
    root = tmp_path_factory.mktemp("api-overhead")
    rng = np.random.default_rng(0)
    text = "\n".join(" ".join(rng.choice(WORDS, size=12)) for _ in range(400))
    corpus = root / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    options = dict(
        data=[str(corpus)],
        out_dir=str(root / "runs"),
        name="tiny",
        device="cpu",
        dim=32,
        depth=2,
        batch_size=4,
        chunk_len=32,
        max_steps=5,
        max_time=None,
        warmup=0,
        eval_every=0,
        eval_tokens=1024,
        log_every=1,
        sample_tokens=0,
        cache_dir=str(root / "cache"),
    )
    cfg = grufinity.TrainConfig(**options)
    outcome = grufinity.train(cfg)
    return grufinity.load(outcome["run_dir"], device="cpu")


def test_forward_chunk(benchmark, model) -> None:
    """One forward call on a [1, 64] chunk from the initial state."""
    tokens = np.asarray(model.encode("now is the winter of our discontent made glorious summer by this su"[:64]))
    logits, _ = benchmark(model.forward, tokens)
    assert logits.shape == (1, len(tokens), model.vocab_size)


def test_forward_one_token_with_state(benchmark, model) -> None:
    """One forward call on a single token continuing a state: the per-token cost of a
    Python-driven decoding loop."""
    _, state = model.forward(np.asarray(model.encode("the king")))
    token = np.asarray([[model.encode(" ")[0]]])
    logits, _ = benchmark(model.forward, token, state)
    assert logits.shape == (1, 1, model.vocab_size)


def test_generate_32_greedy(benchmark, model) -> None:
    """One generate call: a short prompt and 32 greedy tokens."""
    text = benchmark(model.generate, "my lord ", max_new_tokens=32, temperature=0.0)
    assert isinstance(text, str)


def test_generate_1_token(benchmark, model) -> None:
    """One generate call of a single token: the fixed cost of a call."""
    out, _ = benchmark(model.generate_bytes, "a", max_new_tokens=1, temperature=0.0)
    assert len(out) == 1
