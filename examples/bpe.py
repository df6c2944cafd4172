"""A byte-level BPE tokenizer trained on your corpus (saved in the run as a Hugging Face
tokenizer.json), then reused by a second run without training it again.

    python examples/bpe.py corpus/
"""

import json
from pathlib import Path

import grufinity
from _common import parse, run_dir, settings

args = parse(__doc__)
first = grufinity.train(grufinity.TrainConfig(**settings(args, "bpe", tokenizer="bpe", vocab_size=512, max_time=60)))
tokenizer_file = run_dir(first) / "checkpoints" / "last" / "tokenizer.json"
vocab = json.loads(tokenizer_file.read_text())["model"]["vocab"]
print(f"trained a BPE tokenizer of {len(vocab)} tokens: {tokenizer_file}")

model = grufinity.load(first["run_dir"])
ids = model.encode("def main():\n    return None\n")
print(f"{len(ids)} tokens for 28 bytes:", [model.decode([i]) for i in ids])

# A second run reuses the tokenizer (a tokenizer.json or a run directory).
second = grufinity.train(grufinity.TrainConfig(**settings(args, "bpe-again", tokenizer=str(Path(first["run_dir"])), max_time=30)))
print("second run:", second["run_dir"], "vocabulary", grufinity.load(second["run_dir"]).vocab_size)
