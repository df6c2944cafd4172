"""The data pipeline from the outside: tokenizers saved with a run, document separators, the
token cache, ``grufinity data stats``, and clear errors for bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import TINY, run_cli, write_corpus

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def one_line_error(proc) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    return lines[0]


def cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def train(corpus, out_dir: Path, name: str, *flags, cache: Path | None = None):
    extra = ["--cache-dir", cache] if cache else []
    return run_cli(
        "train", corpus, *TINY, "--max-steps", "2", "--out-dir", out_dir, "--name", name,
        "--progress", "plain", *extra, *flags,
    )


def checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last"


# ---------------------------------------------------------------- tokenizers in runs


def test_char_run_saves_its_vocabulary_and_eval_needs_no_flags(tmp_path, corpus):
    proc = train(corpus, tmp_path, "c")
    assert proc.returncode == 0, proc.stderr
    assert "data: built a char tokenizer" not in proc.stderr  # byte is the default
    proc = train(corpus, tmp_path, "c2", "--tokenizer", "char")
    assert proc.returncode == 0, proc.stderr
    assert "data: built a char tokenizer of" in proc.stderr
    ckpt = checkpoint(tmp_path / "c2")
    tok = json.loads((ckpt / "tokenizer.json").read_text())
    assert tok["kind"] == "char"
    chars = set(corpus.read_text())
    assert set(tok["chars"]) == chars
    trainer = json.loads((ckpt / "trainer.json").read_text())
    assert trainer["config"]["model"]["vocab_size"] == len(chars) + 1  # + unknown
    # eval on text with characters the vocabulary has never seen: no flags, no error.
    other = tmp_path / "other.txt"
    other.write_text("Zebra quartz jukebox vexing 12345 — ok\n" * 30, encoding="utf-8")
    proc = run_cli("eval", tmp_path / "c2", other, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["bits_per_byte"] > 0


def test_bpe_run_saves_a_hugging_face_tokenizer_that_loads_again(tmp_path, corpus):
    proc = train(corpus, tmp_path, "b", "--tokenizer", "bpe", "--vocab-size", "300")
    assert proc.returncode == 0, proc.stderr
    saved = checkpoint(tmp_path / "b") / "tokenizer.json"
    hf = json.loads(saved.read_text())
    assert hf["model"]["type"] == "BPE" and hf["pre_tokenizer"]["type"] == "ByteLevel"
    trainer = json.loads((checkpoint(tmp_path / "b") / "trainer.json").read_text())
    assert trainer["config"]["model"]["vocab_size"] == 300
    assert "tokenizer" not in trainer, "tokenizer.json is the checkpoint's one copy of the tokenizer"
    # bits per byte uses the real bytes/token ratio (> 1 byte per token with merges).
    evals = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    ev = [e for e in evals if e["event"] == "eval"][-1]
    assert ev["val_bpb"] < ev["val_bpt"]
    # A new run can reuse the file (or the run directory) instead of training a tokenizer.
    for i, spec in enumerate([saved, tmp_path / "b"]):
        proc = train(corpus, tmp_path, f"b{i}", "--tokenizer", spec)
        assert proc.returncode == 0, proc.stderr
        assert "training a bpe tokenizer" not in proc.stderr
        again = json.loads((checkpoint(tmp_path / f"b{i}") / "tokenizer.json").read_text())
        assert again["model"]["vocab"] == hf["model"]["vocab"]
        assert again["model"]["merges"] == hf["model"]["merges"]


def test_doc_separator_and_reset_at_doc(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(4):
        write_corpus(docs / f"doc{i}.txt", repeats=12 + i)
    proc = train(docs, tmp_path, "d", "--doc-separator", "--reset-at-doc")
    assert proc.returncode == 0, proc.stderr
    trainer = json.loads((checkpoint(tmp_path / "d") / "trainer.json").read_text())
    tokenizer = json.loads((checkpoint(tmp_path / "d") / "tokenizer.json").read_text())
    assert tokenizer == {"kind": "byte", "doc_separator": True}
    assert trainer["config"]["model"]["vocab_size"] == 257
    assert trainer["config"]["reset_at_doc"] is True
    line = one_line_error(train(docs, tmp_path, "d2", "--reset-at-doc"))
    assert "reset_at_doc" in line and "--doc-separator" in line


# ---------------------------------------------------------------- the cache and data stats


def test_data_stats_reports_and_shares_the_cache(tmp_path, corpus):
    cache = tmp_path / "cache"
    proc = run_cli("data", "stats", corpus, "--tokenizer", "char", "--cache-dir", cache, "--top", "5")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for text in ("bytes: ", "tokens: ", "vocabulary: ", "lines: ", "most frequent tokens:", "tokens cached at"):
        assert text in out, out
    assert "data: encoded" in proc.stderr
    proc = run_cli("data", "stats", corpus, "--tokenizer", "char", "--cache-dir", cache, "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    size = corpus.stat().st_size
    assert s["bytes"] == size and s["tokens"] == size  # ASCII: one token per byte
    assert s["tokenizer"] == "char" and s["used_tokens"] == s["vocab_size"] - 1  # all but unknown
    assert s["top"][0]["text"] == " "
    assert s["lines"]["count"] == corpus.read_text().count("\n")
    assert sum(n for _, n in s["lines"]["histogram"]) == s["lines"]["count"]
    # Training on the same corpus with the same tokenizer reuses those tokens.
    proc = train(corpus, tmp_path, "r", "--tokenizer", "char", cache=cache)
    assert proc.returncode == 0, proc.stderr
    assert "data: reusing the char tokenizer" in proc.stderr
    assert "cached tokens from" in proc.stderr and "data: encoded" not in proc.stderr


def test_changed_source_is_encoded_again(tmp_path):
    cache = tmp_path / "cache"
    corpus = write_corpus(tmp_path / "c.txt")
    first = json.loads(run_cli("data", "stats", corpus, "--cache-dir", cache, "--json").stdout)
    second = json.loads(run_cli("data", "stats", corpus, "--cache-dir", cache, "--json").stdout)
    assert second["store"]["path"] == first["store"]["path"]
    with corpus.open("a") as f:
        f.write("one more line\n")
    third = json.loads(run_cli("data", "stats", corpus, "--cache-dir", cache, "--json").stdout)
    assert third["store"]["path"] != first["store"]["path"]
    assert third["tokens"] == first["tokens"] + len("one more line\n")
    assert not Path(first["store"]["path"]).exists()
    assert len([n for n in cache_files(cache) if n.endswith(".tokens")]) == 1


def test_bpe_stats_on_tinyshakespeare(tmp_path):
    path = SHARED / "tinyshakespeare" / "input.txt"
    if not path.exists():
        pytest.skip("../shared/data/tinyshakespeare/input.txt is absent")
    proc = run_cli("data", "stats", path, "--tokenizer", "bpe", "--vocab-size", "400",
                   "--cache-dir", tmp_path / "cache", "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["vocab_size"] == 400 and s["tokens"] < s["bytes"] / 1.5
    assert abs(s["bytes_per_token"] - s["bytes"] / s["tokens"]) < 1e-9


# ---------------------------------------------------------------- bad input


def _bad_inputs(tmp_path: Path) -> dict:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    no_files = tmp_path / "nothing"
    no_files.mkdir()
    (no_files / ".hidden").write_text("secret")
    (no_files / "blank.txt").write_bytes(b"")
    (no_files / "sub").mkdir()
    small = tmp_path / "small.txt"
    small.write_text("To be, or not to be, that is the question.\n")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 20)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e\n".encode("latin-1") * 200)
    text = write_corpus(tmp_path / "text.txt")
    return {
        "missing path": ([tmp_path / "nope.txt"], [], ["nope.txt", "no such file", "give an existing"]),
        "empty file": ([empty], [], ["empty", "give a file with some text"]),
        "directory with no readable files": ([no_files], [], ["no readable", "give a directory"]),
        "file smaller than one chunk": (
            [small], ["--chunk-len", "128"], ["training split has", "lower --batch-size / --chunk-len"],
        ),
        "binary data with char": ([binary], ["--tokenizer", "char"], ["not UTF-8", "char", "--tokenizer byte"]),
        "non-UTF-8 with bpe": ([latin1], ["--tokenizer", "bpe"], ["not UTF-8", "offset 3", "0xe9", "--tokenizer byte"]),
        "val fraction 0": ([text], ["--val-fraction", "0"], ["val_fraction", "in (0, 1)"]),
        "val fraction 1": ([text], ["--val-fraction", "1"], ["val_fraction", "in (0, 1)"]),
        "val fraction 1.5": ([text], ["--val-fraction", "1.5"], ["val_fraction", "in (0, 1)"]),
        "batch x chunk larger than the corpus": (
            [text], ["--batch-size", "64", "--chunk-len", "256"], ["needs at least", "use a larger corpus"],
        ),
        "unknown tokenizer": ([text], ["--tokenizer", "sentencepiece"], ["unknown tokenizer", "byte, char, bpe"]),
        "vocab size for byte": ([text], ["--vocab-size", "500"], ["vocab_size", "only applies to --tokenizer bpe"]),
        "bpe vocab too small": ([text], ["--tokenizer", "bpe", "--vocab-size", "100"], ["vocab_size", "between"]),
    }


CASES = [
    "missing path", "empty file", "directory with no readable files", "file smaller than one chunk",
    "binary data with char", "non-UTF-8 with bpe", "val fraction 0", "val fraction 1", "val fraction 1.5",
    "batch x chunk larger than the corpus", "unknown tokenizer", "vocab size for byte", "bpe vocab too small",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_a_clear_error_and_leaves_no_cache(tmp_path, case):
    paths, flags, expected = _bad_inputs(tmp_path)[case]
    cache = tmp_path / "cache"
    proc = run_cli(
        "train", *paths, "--dim", "16", "--depth", "1", "--max-steps", "1", "--out-dir", tmp_path / "runs",
        "--name", "bad", "--cache-dir", cache, *flags,
    )
    line = one_line_error(proc)
    for text in expected:
        assert text in line, f"{case}: {text!r} not in {line!r}"
    assert cache_files(cache) == [], f"{case}: the cache was written: {cache_files(cache)}"
    assert not (tmp_path / "runs" / "bad" / "checkpoints").exists()


def test_data_stats_bad_input(tmp_path):
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    line = one_line_error(run_cli("data", "stats", binary, "--tokenizer", "char", "--cache-dir", tmp_path / "c"))
    assert "not UTF-8" in line and "--tokenizer byte" in line
    assert cache_files(tmp_path / "c") == []
    line = one_line_error(run_cli("data", "stats", tmp_path / "missing.txt"))
    assert "no such file" in line
