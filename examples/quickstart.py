"""Train a small minGRU language model, then use it: generate, stream, evaluate.

    python examples/quickstart.py notes.txt      # ~2 minutes on a laptop CPU
"""

import grufinity
from _common import parse, settings

args = parse(__doc__)

# Every setting is a keyword (the same keys as `grufinity train --help`); a bad value raises
# grufinity.ConfigError naming it.
config = grufinity.TrainConfig(**settings(args, "quickstart", max_time=120, dim=128, depth=3))


def show(event):
    if event["event"] == "eval":
        print(f"step {event['step']}: validation loss {event['val_loss']:.3f} nats/token")


result = grufinity.train(config, on_event=show)
print("run saved to", result["run_dir"])

model = grufinity.load(result["run_dir"])
print(f"{model.num_params:,} parameters, trained {model.trainer_state['step']} steps")

# Generation: the prompt goes through the parallel scan once, then each token is one step.
print(model.generate("def ", max_new_tokens=120, temperature=0.8, top_k=40, seed=1))

# Streaming: pieces arrive as they are produced (never splitting a UTF-8 character).
for piece in model.stream("class ", max_new_tokens=60, seed=2):
    print(piece, end="", flush=True)
print()

# Loss on any text, with the state carried through it.
held_out = "def add(a, b):\n    return a + b\n" * 4
print(model.evaluate(held_out))
