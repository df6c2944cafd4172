"""Generation: sampling controls, beams, stop strings, batches, saved states, `chat`, `info`."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

import grufinity
from grufinity import _grufinity
from conftest import clean_env, grufinity_exe, run_cli


def assert_clean_error(proc: subprocess.CompletedProcess) -> str:
    """Non-zero exit, exactly one stderr line starting with ``error:``, no traceback."""
    err = proc.stderr.decode("utf-8", "replace") if isinstance(proc.stderr, bytes) else proc.stderr
    assert proc.returncode != 0, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error:"), lines[0]
    return lines[0]


def run_bytes(*args, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """``grufinity ARGS`` with raw bytes out (no newline translation: the model may write \\r)."""
    return subprocess.run(
        [grufinity_exe(), *[str(a) for a in args]], input=stdin, capture_output=True, timeout=120, env=clean_env()
    )


def text(data: bytes) -> bytes:
    """What the CLI prints for generated ``data``: UTF-8 with invalid bytes replaced."""
    return data.decode("utf-8", errors="replace").encode("utf-8")


@pytest.fixture(scope="module")
def run_dir(trained) -> Path:
    assert trained["proc"].returncode == 0, trained["proc"].stderr
    return trained["run_dir"]


@pytest.fixture(scope="module")
def model(run_dir) -> grufinity.Model:
    return grufinity.load(run_dir, "cpu")


GREEDY = dict(temperature=0.0)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def total_log_prob(model: grufinity.Model, prompt: bytes, out: bytes) -> float:
    """Sum of the model's log-probabilities of ``out`` after ``prompt`` (one parallel forward)."""
    tokens = model.encode(prompt + out)
    logits, _ = model.forward(np.array(tokens))
    lp = log_softmax(logits[0])
    start = len(model.encode(prompt))
    return float(sum(lp[start - 1 + i, t] for i, t in enumerate(tokens[start:])))


def a_char(text: bytes) -> tuple[int, str]:
    """The first printable ASCII character of ``text`` (not a backslash) and where it is."""
    for i, b in enumerate(text):
        if 32 < b < 127 and b != ord("\\"):
            return i, chr(b)
    pytest.skip("the tiny model wrote no printable ASCII")


# ---------------------------------------------------------------- API


def test_greedy_equals_argmax_of_a_full_forward(model):
    prompt = b"The quick "
    out, _ = model.generate_bytes(prompt, max_new_tokens=20, **GREEDY)
    assert len(out) == 20
    tokens = model.encode(prompt + out)
    logits, _ = model.forward(np.array(tokens))
    start = len(prompt)
    predicted = logits[0, start - 1 : len(tokens) - 1].argmax(axis=-1)
    assert predicted.tolist() == tokens[start:]


@pytest.mark.parametrize("dtype", ["f32", "bf16", "int8"])
@pytest.mark.parametrize("kw", [GREEDY, dict(temperature=1.0, top_k=20, seed=3)])
def test_generate_batch_equals_unbatched(run_dir, kw, dtype):
    # bf16/int8 rows are widened once for all streams of a batched step: the same sums.
    model = grufinity.load(run_dir, "cpu", dtype=dtype)
    prompts = ["The ", "A", "", "Where there is a will"]
    batched = model.generate_batch(prompts, max_new_tokens=12, **kw)
    assert len(batched) == len(prompts)
    for p, b in zip(prompts, batched):
        assert b == model.generate(p, max_new_tokens=12, **kw)


def test_generate_batch_rejects_a_single_string(model):
    with pytest.raises(grufinity.ConfigError):
        model.generate_batch("The ", max_new_tokens=3)
    with pytest.raises(grufinity.ConfigError, match="`state`"):
        model.generate_batch(["The "], state=None)


@pytest.mark.parametrize("kw", [GREEDY, dict(temperature=1.0, repetition_penalty=1.2, seed=4)])
def test_continued_generation_equals_one_long_generation(model, kw):
    whole, _ = model.generate_bytes("The ", max_new_tokens=25, **kw)
    first, state = model.generate_bytes("The ", max_new_tokens=10, **kw)
    assert state.tokens_seen == 4 + 10
    # Through bytes, as `generate --continue` does.
    state = model.load_state(model.save_state(state))
    second, state = model.generate_bytes(b"", max_new_tokens=15, state=state, **kw)
    assert first + second == whole
    assert state.finish == "length"


def test_load_state_rejects_bad_bytes(model):
    _, state = model.generate_bytes("The ", max_new_tokens=3, **GREEDY)
    data = model.save_state(state)
    with pytest.raises(grufinity.DataError):
        model.load_state(b"garbage")
    with pytest.raises(grufinity.DataError):
        model.load_state(data[: len(data) // 2])
    # The same state claiming another model config.
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    cfg = json.loads(header["__metadata__"]["model"])
    cfg["dim"] += 1
    header["__metadata__"]["model"] = json.dumps(cfg)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with pytest.raises(grufinity.DataError, match="different model"):
        model.load_state(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def sample(logits, history=(), seed=0, **kw) -> int:
    return _grufinity.Model.sample_logits([float(x) for x in logits], kw, list(history), seed)


def support(logits, history=(), **kw) -> set[int]:
    return {sample(logits, history, seed=s, **kw) for s in range(300)}


PROBS = np.log([0.5, 0.3, 0.15, 0.05])


def test_controls_on_a_fixed_logit_vector():
    assert support(PROBS, temperature=1.0) == {0, 1, 2, 3}
    assert support(PROBS, temperature=0.0) == {0}
    assert support(PROBS, temperature=1.0, top_k=2) == {0, 1}
    assert support(PROBS, temperature=1.0, top_p=0.7) == {0, 1}
    assert support(PROBS, temperature=1.0, top_p=0.9) == {0, 1, 2}
    assert support(PROBS, temperature=1.0, min_p=0.5) == {0, 1}
    assert support(PROBS, temperature=1.0, min_p=0.2) == {0, 1, 2}


def test_repetition_penalty_and_no_repeat_ngram():
    logits = [2.0, 1.9, -1.0, -1.2]
    assert sample(logits, [0], temperature=0.0) == 0
    assert sample(logits, [0], temperature=0.0, repetition_penalty=2.0) == 1
    ngram = dict(temperature=0.0, no_repeat_ngram_size=2)
    assert sample([3.0, 2.0, 1.0, 0.0], [1, 0, 3, 1], **ngram) == 1  # (1, 0) was seen
    assert sample([3.0, 2.0, 1.0, 0.0], [1, 0, 3], **ngram) == 0
    assert sample([3.0, 2.0, 1.0, 0.0], [0, 1], temperature=0.0, no_repeat_ngram_size=1) == 2


def test_beams(model):
    prompt = b"The "
    greedy, _ = model.generate_bytes(prompt, max_new_tokens=12, **GREEDY)
    one, _ = model.generate_bytes(prompt, max_new_tokens=12, beams=1, **GREEDY)
    assert one == greedy
    g = total_log_prob(model, prompt, greedy)
    for beams in (2, 4):
        out, _ = model.generate_bytes(prompt, max_new_tokens=12, beams=beams, seed=1)
        again, _ = model.generate_bytes(prompt, max_new_tokens=12, beams=beams, seed=2, temperature=1.5)
        assert out == again, "beam search is deterministic"
        assert len(out) == 12
        assert total_log_prob(model, prompt, out) >= g - 1e-3


def test_stop_strings_stop(model):
    free, _ = model.generate_bytes("The ", max_new_tokens=40, no_repeat_ngram_size=1, **GREEDY)
    at, ch = a_char(free)
    out, state = model.generate_bytes("The ", max_new_tokens=40, no_repeat_ngram_size=1, stop=ch, **GREEDY)
    assert out == free[:at]
    assert state.finish == "stop"
    assert state.tokens_seen == 4 + at + 1, "the stop string was consumed"
    # A list works; the streamed pieces join to the same text.
    pieces = []
    out2, _ = model.generate_bytes(
        "The ", max_new_tokens=40, no_repeat_ngram_size=1, stop=["\x00\x01", ch], on_piece=pieces.append, **GREEDY
    )
    assert out2 == out == b"".join(pieces)
    assert "".join(model.stream("The ", max_new_tokens=40, no_repeat_ngram_size=1, stop=ch, **GREEDY)) == out.decode(
        "utf-8", errors="replace"
    )


def test_min_new_tokens_delays_a_stop(model):
    free, _ = model.generate_bytes("The ", max_new_tokens=40, no_repeat_ngram_size=1, **GREEDY)
    at, ch = a_char(free)
    out, state = model.generate_bytes(
        "The ", max_new_tokens=40, no_repeat_ngram_size=1, stop=ch, min_new_tokens=at + 2, **GREEDY
    )
    assert out == free  # every byte differs, so the stop character never comes back
    assert state.finish == "length"


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(beams=0), "beams"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(min_new_tokens=-1), "min_new_tokens"),
        (dict(min_new_tokens=10, max_new_tokens=5), "min_new_tokens"),
        (dict(stop=""), "stop"),
        (dict(eos=256), "eos"),
    ],
)
def test_bad_values_raise_config_error_naming_the_field(model, kw, field):
    with pytest.raises(grufinity.ConfigError, match=field):
        model.generate("The ", **{"max_new_tokens": 5, **kw})
    with pytest.raises(grufinity.ConfigError, match=field):
        model.generate_batch(["The "], **{"max_new_tokens": 5, **kw})


def test_parameters_and_stats(model):
    params = model.parameters()
    assert sum(a.size for a in params.values()) == model.num_params
    assert params["embedding.weight"].shape == (256, 32)
    modules = model.module_params()
    assert sum(modules.values()) == model.num_params
    assert list(modules)[0] == "embedding"
    assert "blocks.0" in modules
    stats = {s["name"]: s for s in model.tensor_stats()}
    w = params["embedding.weight"]
    s = stats["embedding.weight"]
    assert s["shape"] == [256, 32]
    assert s["mean"] == pytest.approx(float(w.mean()), abs=1e-6)
    assert s["std"] == pytest.approx(float(w.std()), rel=1e-5)
    assert s["min"] == pytest.approx(float(w.min())) and s["max"] == pytest.approx(float(w.max()))


# ---------------------------------------------------------------- CLI: generate


def test_cli_generate_stop(run_dir, model):
    free, _ = model.generate_bytes("The ", max_new_tokens=30, no_repeat_ngram_size=1, **GREEDY)
    at, ch = a_char(free)
    proc = run_bytes("generate", run_dir, "-p", "The ", "-n", "30", "-t", "0", "--no-repeat-ngram-size", "1", "--stop", ch)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"The " + text(free[:at]) + b"\n"


def test_cli_generate_matches_the_api_with_new_controls(run_dir, model):
    kw = dict(max_new_tokens=40, no_repeat_ngram_size=2, min_new_tokens=5, **GREEDY)
    out, _ = model.generate_bytes("ab", **kw)
    seq = b"ab" + out
    bigrams = [seq[i : i + 2] for i in range(len(seq) - 1)]
    assert len(bigrams) == len(set(bigrams)), "no bigram repeats"
    proc = run_bytes("generate", run_dir, "-p", "ab", "-n", "40", "-t", "0", "--no-repeat-ngram-size", "2", "--min-new-tokens", "5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"ab" + text(out) + b"\n"


def test_cli_generate_beams_deterministic(run_dir, model):
    a = run_bytes("generate", run_dir, "-p", "The ", "-n", "8", "--beams", "3", "--seed", "1")
    b = run_bytes("generate", run_dir, "-p", "The ", "-n", "8", "--beams", "3", "--seed", "2", "-t", "1.5")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout
    out, _ = model.generate_bytes("The ", max_new_tokens=8, beams=3)
    assert a.stdout == b"The " + text(out) + b"\n"


@pytest.mark.parametrize("sampling", [["-t", "0"], ["-t", "1.0", "--seed", "9"]])
def test_cli_generate_continue_equals_one_run(run_dir, model, tmp_path, sampling):
    kw = dict(temperature=float(sampling[1]), seed=int(sampling[3]) if len(sampling) > 2 else 0)
    whole, _ = model.generate_bytes("The ", max_new_tokens=24, **kw)
    state = tmp_path / "story.state"
    first = run_bytes("generate", run_dir, "-p", "The ", "-n", "10", "--continue", state, *sampling)
    assert first.returncode == 0, first.stderr
    assert state.is_file()
    second = run_bytes("generate", run_dir, "-n", "14", "--continue", state, *sampling)
    assert second.returncode == 0, second.stderr
    # Each piece prints its own bytes (the prompt only in the first); together: one long run.
    assert first.stdout == b"The " + text(whole[:10])
    assert second.stdout == text(whole[10:])


def test_cli_generate_continue_rejects_a_bad_state_and_keeps_it(run_dir, tmp_path):
    bad = tmp_path / "bad.state"
    bad.write_bytes(b"not a state")
    proc = run_cli("generate", run_dir, "-n", "5", "--continue", bad)
    line = assert_clean_error(proc)
    assert "bad.state" in line
    assert bad.read_bytes() == b"not a state"


@pytest.mark.parametrize(
    "flags, field",
    [
        (["--beams", "0"], "beams"),
        (["--temperature", "-1"], "temperature"),
        (["--top-p", "0"], "top_p"),
        (["--top-p", "1.5"], "top_p"),
        (["--min-new-tokens", "-3"], "min_new_tokens"),
        (["--no-repeat-ngram-size", "-1"], "no_repeat_ngram_size"),
        (["--stop", ""], "stop"),
    ],
)
def test_cli_generate_bad_values(run_dir, flags, field):
    proc = run_cli("generate", run_dir, "-n", "5", *flags)
    line = assert_clean_error(proc)
    assert field in line
    assert proc.stdout == ""


# ---------------------------------------------------------------- CLI: chat


def chat(run_dir: Path, script: str, *flags: str) -> subprocess.CompletedProcess:
    return run_bytes("chat", run_dir, "-n", "30", *flags, stdin=script.encode())


def replies(proc: subprocess.CompletedProcess) -> list[bytes]:
    assert proc.returncode == 0, proc.stderr
    assert b"Traceback" not in proc.stderr
    lines = proc.stdout.split(b"\n")
    assert lines[-1] == b""
    return lines[:-1]


def test_chat_turns_continue_the_state(run_dir, model):
    r = replies(chat(run_dir, "The \nA stitch\n", "-t", "0"))
    assert len(r) == 2
    first, state = model.generate_bytes("The \n", max_new_tokens=30, stop="\n", **GREEDY)
    second, _ = model.generate_bytes("A stitch\n", max_new_tokens=30, stop="\n", state=state, **GREEDY)
    assert r == [text(first), text(second)]


def test_chat_reset_starts_over(run_dir):
    proc = chat(run_dir, "The \nAll that\n/reset\nThe \n", "-t", "0")
    r = replies(proc)
    assert len(r) == 3
    assert r[2] == r[0]
    assert b"reset" in proc.stderr


def test_chat_temp_and_topk(run_dir):
    greedy = replies(chat(run_dir, "The \n", "-t", "0"))
    assert replies(chat(run_dir, "/temp 0\nThe \n", "-t", "1.5", "--seed", "3")) == greedy
    assert replies(chat(run_dir, "/topk 1\nThe \n", "-t", "1.0", "--seed", "3")) == greedy
    proc = chat(run_dir, "/temp -1\n/temp abc\nThe \n", "-t", "0")
    assert replies(proc) == greedy, "bad values are refused and the session goes on"
    assert proc.stderr.count(b"error:") == 2
    assert b"temperature" in proc.stderr


def test_chat_help_quit_and_unknown(run_dir):
    proc = chat(run_dir, "/help\n/bogus\nThe \n/quit\nThe \n", "-t", "0")
    assert len(replies(proc)) == 1, "nothing after /quit runs"
    for cmd in (b"/reset", b"/temp", b"/topk", b"/quit"):
        assert cmd in proc.stderr
    assert b"unknown command /bogus" in proc.stderr


def test_chat_eof_exits_cleanly(run_dir):
    proc = chat(run_dir, "")
    assert proc.returncode == 0
    assert proc.stdout == b""
    assert b"Traceback" not in proc.stderr


def test_chat_bad_option_is_one_line(run_dir):
    proc = chat(run_dir, "The \n", "--top-p", "2")
    assert_clean_error(proc)


# ---------------------------------------------------------------- CLI: info


def test_info_tensor_stats(run_dir, model):
    proc = run_cli("info", run_dir)
    assert proc.returncode == 0, proc.stderr
    assert "parameters by module:" in proc.stdout
    assert "embedding.weight" in proc.stdout
    assert "256x32" in proc.stdout
    for col in ("mean", "std", "min", "max"):
        assert col in proc.stdout
    data = json.loads(run_cli("info", run_dir, "--json").stdout)
    assert sum(data["modules"].values()) == data["parameters"] == model.num_params
    names = {t["name"] for t in data["tensors"]}
    assert names == set(model.parameters())


# ---------------------------------------------------------------- bf16 weights


def test_bf16_weights_cost_little_loss_and_agree_with_their_own_evaluation(run_dir, trained):
    """`dtype="bf16"` rounds the weights: the loss moves a little (not zero: the rounding is
    real), greedy decoding is deterministic, and `eval --dtype bf16` reports the rounded loss."""
    corpus = trained["corpus"].read_bytes()[:4096]
    f32 = grufinity.load(run_dir, device="cpu")
    bf16 = grufinity.load(run_dir, device="cpu", dtype="bf16")
    a, b = f32.evaluate(corpus)["loss"], bf16.evaluate(corpus)["loss"]
    assert a != b
    assert abs(a - b) < 0.05 * a
    once = bf16.generate("The ", max_new_tokens=40, temperature=0.0)
    assert once == bf16.generate("The ", max_new_tokens=40, temperature=0.0)
    proc = run_cli("eval", run_dir, trained["corpus"], "--dtype", "bf16", "--json")
    assert proc.returncode == 0, proc.stderr
    full = grufinity.load(run_dir, device="cpu", dtype="bf16").evaluate(trained["corpus"].read_bytes())
    assert json.loads(proc.stdout)["loss"] == pytest.approx(full["loss"], rel=1e-6)
    proc = run_cli("generate", run_dir, "-p", "The ", "-n", "40", "--temperature", "0", "--dtype", "bf16", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip("\n") == "The " + once


def test_bad_dtype_is_a_clean_error(run_dir):
    with pytest.raises(grufinity.ConfigError, match="dtype"):
        grufinity.load(run_dir, dtype="fp8")
    proc = run_cli("generate", run_dir, "--dtype", "fp16")
    assert proc.returncode == 2
    assert "fp16" in proc.stderr and "Traceback" not in proc.stderr
