"""Truncated backpropagation through time and unbounded context.

Training reads each stream in chunks of `chunk_len` tokens and carries its recurrent state to
the next chunk, so the model learns from text longer than a chunk. The same invariant holds at
inference: a text fed in pieces, carrying the state, gives exactly the logits of one pass, and a
generation can be saved and continued later with O(1) memory.

    python examples/long_context.py book.txt
"""

import numpy as np

import grufinity
from _common import parse, settings

args = parse(__doc__)
config = grufinity.TrainConfig(**settings(args, "long-context", chunk_len=64, max_time=120))
result = grufinity.train(config)
model = grufinity.load(result["run_dir"])

# One pass over 200 tokens, and the same tokens in four pieces with the state carried.
tokens = np.array(model.encode("import os\n" * 20)[:200])
whole, _ = model.forward(tokens)
state, pieces = None, []
for piece in np.array_split(tokens, 4):
    logits, state = model.forward(piece, state)
    pieces.append(logits)
chunked = np.concatenate(pieces, axis=1)
print("largest difference, whole vs chunked:", float(np.abs(whole - chunked).max()))

# A generation saved to a file and continued in another process equals one long generation.
first, state = model.generate_bytes("def ", max_new_tokens=40, seed=3, temperature=0.7)
saved = model.save_state(state)
more, _ = model.generate_bytes(b"", max_new_tokens=40, seed=3, temperature=0.7, state=model.load_state(saved))
at_once, _ = model.generate_bytes("def ", max_new_tokens=80, seed=3, temperature=0.7)
print("pieces equal one generation:", first + more == at_once)
print((b"def " + at_once).decode(errors="replace"))
