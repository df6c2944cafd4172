"""Tests of the Python API: grufinity.train / load / Model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import grufinity
from grufinity import config as config_mod
from grufinity import corpus as corpus_mod


def tiny_config(corpus: Path, out_dir: Path, name: str, **kw) -> grufinity.TrainConfig:
    values = dict(
        data=[str(corpus)],
        out_dir=str(out_dir),
        name=name,
        dim=32,
        depth=1,
        batch_size=2,
        chunk_len=16,
        max_steps=3,
        max_time=None,
        eval_every=0,
        eval_tokens=256,
        sample_tokens=10,
        log_every=1,
    )
    values.update(kw)
    return grufinity.TrainConfig(**values)


@pytest.fixture(scope="module")
def api_run(tmp_path_factory, corpus):
    out_dir = tmp_path_factory.mktemp("api-runs")
    events = []
    result = grufinity.train(tiny_config(corpus, out_dir, "api"), events.append)
    return {"result": result, "events": events, "out_dir": out_dir}


@pytest.fixture(scope="module")
def model(api_run):
    return grufinity.load(api_run["result"]["run_dir"], "cpu")


def test_train_returns_outcome(api_run):
    r = api_run["result"]
    assert isinstance(r, dict)
    run_dir = Path(r["run_dir"])
    assert run_dir.is_dir()
    assert run_dir.resolve() == (api_run["out_dir"] / "api").resolve()
    assert r["step"] == 3
    assert not r["interrupted"]
    assert (run_dir / "checkpoints" / "last" / "trainer.json").is_file()


def test_train_events(api_run):
    kinds = [e["event"] for e in api_run["events"]]
    assert kinds[0] == "start"
    assert kinds[-1] == "done"
    assert [e["step"] for e in api_run["events"] if e["event"] == "step"] == [1, 2, 3]


def test_on_event_false_stops(tmp_path, corpus):
    def stop_after_two(e):
        return not (e["event"] == "step" and e["step"] >= 2)

    r = grufinity.train(tiny_config(corpus, tmp_path, "stop", max_steps=50), stop_after_two)
    assert r["interrupted"]
    assert r["step"] == 2
    assert (Path(r["run_dir"]) / "checkpoints" / "last" / "trainer.json").is_file()


def test_model_properties(model):
    assert model.vocab_size == 256
    assert model.num_params > 0
    assert model.checkpoint.is_dir()
    assert model.config["model"]["dim"] == 32
    assert model.trainer_state["step"] == 3


def test_encode_decode_roundtrip(model):
    toks = model.encode("héllo")
    assert toks == list("héllo".encode())
    assert model.decode(toks) == "héllo"


def test_forward_shape(model):
    logits, state = model.forward(np.array([[1, 2, 3, 4]]))
    assert logits.shape == (1, 4, 256)
    assert logits.dtype == np.float32
    assert np.all(np.isfinite(logits))
    assert isinstance(state, grufinity.State)
    assert state.batch == 1


def test_forward_1d_input(model):
    a, _ = model.forward(np.array([1, 2, 3, 4]))
    b, _ = model.forward(np.array([[1, 2, 3, 4]]))
    assert a.shape == (1, 4, 256)
    np.testing.assert_array_equal(a, b)


def test_forward_state_carry_matches_full_sequence(model):
    """TBPTT invariant: processing a sequence in chunks with the carried state equals one pass."""
    full, _ = model.forward(np.array([[1, 2, 3, 4]]))
    first, state = model.forward(np.array([[1, 2]]))
    second, _ = model.forward(np.array([[3, 4]]), state)
    chunked = np.concatenate([first, second], axis=1)
    assert chunked.shape == full.shape
    assert np.allclose(full, chunked, atol=1e-4), np.abs(full - chunked).max()


def test_forward_batch_rows_independent(model):
    rows = np.array([[10, 20, 30, 40], [72, 101, 108, 108]])
    both, state = model.forward(rows)
    assert both.shape == (2, 4, 256)
    assert state.batch == 2
    for i in range(2):
        single, _ = model.forward(rows[i : i + 1])
        assert np.allclose(both[i], single[0], atol=1e-4)


def test_initial_state_equals_no_state(model):
    a, _ = model.forward(np.array([[5, 6, 7]]))
    b, _ = model.forward(np.array([[5, 6, 7]]), model.initial_state(1))
    assert np.allclose(a, b, atol=1e-6)


def test_generate_greedy_deterministic(model):
    a = model.generate("The ", max_new_tokens=20, temperature=0)
    b = model.generate("The ", max_new_tokens=20, temperature=0, seed=99)
    assert a == b
    out, _ = model.generate_bytes("The ", max_new_tokens=20, temperature=0)
    assert len(out) == 20


def test_generate_same_seed_same_text(model):
    a = model.generate("The ", max_new_tokens=30, seed=5)
    b = model.generate("The ", max_new_tokens=30, seed=5)
    assert a == b


def test_stream_joins_to_generate(model):
    kw = dict(max_new_tokens=40, temperature=1.0, seed=7)
    assert "".join(model.stream("The ", **kw)) == model.generate("The ", **kw)


def test_generate_bytes_continues_through_state(model):
    full, _ = model.generate_bytes("The ", max_new_tokens=20, temperature=0)
    first, state = model.generate_bytes("The ", max_new_tokens=10, temperature=0)
    assert isinstance(state, grufinity.State)
    second, _ = model.generate_bytes(b"", max_new_tokens=10, temperature=0, state=state)
    assert first + second == full


def test_generate_bytes_state_plus_prompt_matches_from_scratch(model):
    first, state = model.generate_bytes("The ", max_new_tokens=8, temperature=0)
    cont, _ = model.generate_bytes(b" fox", max_new_tokens=10, temperature=0, state=state)
    scratch, _ = model.generate_bytes(b"The " + first + b" fox", max_new_tokens=10, temperature=0)
    assert cont == scratch


def test_evaluate(model):
    r = model.evaluate("The quick brown fox jumps over the lazy dog. " * 5)
    assert r["loss"] > 0
    assert r["perplexity"] == pytest.approx(np.exp(r["loss"]), rel=1e-6)
    assert r["bits_per_byte"] > 0


# ---------------------------------------------------------------- errors


def test_load_missing_raises_data_not_found(tmp_path):
    with pytest.raises(grufinity.DataNotFoundError) as info:
        grufinity.load(tmp_path / "nope")
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, grufinity.GrufinityError)


def test_load_relative_missing(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError):
        grufinity.load("nope")


def test_bad_config_value_raises_config_error(tmp_path, corpus):
    with pytest.raises(grufinity.ConfigError) as info:
        grufinity.train(tiny_config(corpus, tmp_path, "bad", val_fraction=0.0))
    assert isinstance(info.value, ValueError)
    assert "val_fraction" in str(info.value)
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_config_build_rejects_unknown_and_wrong_type():
    with pytest.raises(grufinity.ConfigError) as info:
        config_mod.build({"no_such_key": 1})
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError):
        config_mod.build({"dim": "big"})
    assert config_mod.build({"lr": 1}).lr == 1.0


def test_bad_sampling_raises_config_error(model):
    with pytest.raises(grufinity.ConfigError):
        model.generate("The ", max_new_tokens=5, top_p=1.5)
    with pytest.raises(ValueError):
        model.generate("The ", max_new_tokens=5, temperature=-1.0)


def test_unknown_device_raises(tmp_path, corpus):
    with pytest.raises(grufinity.GrufinityError):
        grufinity.train(tiny_config(corpus, tmp_path, "dev", device="tpu"))


# ---------------------------------------------------------------- default corpus


def test_default_corpus():
    files = corpus_mod.default_corpus()
    assert files
    assert all(isinstance(p, Path) and p.suffix == ".py" and p.is_file() for p in files)
    root = corpus_mod.stdlib_dir()
    rel = [p.relative_to(root).as_posix() for p in files]
    assert rel == sorted(rel)
    assert sum(p.stat().st_size for p in files) >= 1_000_000
    assert corpus_mod.default_corpus() == files
