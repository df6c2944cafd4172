"""Generation controls: streaming, several prompts at once, stop strings, beam search.

    python examples/generation.py [corpus]
"""

import time

import grufinity
from _common import parse, settings

args = parse(__doc__)
result = grufinity.train(grufinity.TrainConfig(**settings(args, "generation", max_time=60)))
model = grufinity.load(result["run_dir"])

# Streaming with a callback that can stop early (here after 3 lines).
lines = 0


def on_piece(piece: bytes):
    global lines
    print(piece.decode(errors="replace"), end="", flush=True)
    lines += piece.count(b"\n")
    return lines < 3  # False stops


model.generate_bytes("import ", max_new_tokens=200, on_piece=on_piece, seed=4)
print()

# Several prompts share one forward per step; each row equals its own generation.
prompts = ["def ", "class ", "import ", "for "]
start = time.perf_counter()
outs = model.generate_batch(prompts, max_new_tokens=50, seed=5)
print(f"{len(prompts)} prompts x 50 tokens in {time.perf_counter() - start:.2f} s")
assert outs[1] == model.generate("class ", max_new_tokens=50, seed=5)
for p, o in zip(prompts, outs):
    print(repr(p + o))

# Stop strings end the text (left out of it); min_new_tokens delays them.
print(repr(model.generate("def ", max_new_tokens=200, stop=["\n"], seed=6)))

# Deterministic beam search, and sampling controls.
print(repr(model.generate("def ", max_new_tokens=30, beams=4)))
print(repr(model.generate("def ", max_new_tokens=60, temperature=0.9, top_p=0.9, repetition_penalty=1.1,
                          no_repeat_ngram_size=4, seed=7)))
