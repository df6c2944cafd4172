"""``grufinity generate`` and ``grufinity chat``: text from a trained model, streamed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import click

from ..config import KEYS, LOAD_KEYS, SAMPLING_KEYS
from ..errors import GrufinityError
from .._grufinity import write_atomically
from ..text import writer
from . import main
from .options import device_or_env, given, options

#: Short forms of sampling flags.
SHORT = {"max_new_tokens": "-n", "temperature": "-t"}


def unescape(text: str) -> str:
    """``\\n``, ``\\t`` and ``\\\\`` in a command-line string become newline, tab, backslash."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def load_options(f: Any) -> Any:
    """--device and --dtype (from the core's schema)."""
    return options(KEYS, only=["device"])(options(LOAD_KEYS)(f))


def sampling_options(f: Any) -> Any:
    """The sampling flags, --device and --dtype (from the core's schema)."""
    return load_options(options(SAMPLING_KEYS, short=SHORT)(f))


def sampling_given(flags: dict[str, Any]) -> dict[str, Any]:
    out = given(flags)
    if "stop" in out:
        out["stop"] = [unescape(s) for s in out["stop"]]
    return out


@main.command()
@click.argument("run", type=str)
@click.option("-p", "--prompt", default=None,
              help="Text to continue (\\n and \\t are understood).  [default: the run's sample prompt, else a newline]")
@click.option("--prompt-file", type=click.Path(exists=True, dir_okay=False), help="Read the prompt from a file.")
@click.option("--continue", "continue_file", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Continue the text whose state FILE holds (if it exists), then save the new state there: "
                   "a long text written piece by piece equals one written at once.")
@sampling_options
def generate(run: str, prompt: Optional[str], prompt_file: Optional[str], continue_file: Optional[str],
             device: Optional[str], dtype: Optional[str], **flags: Any) -> None:
    """Write text with the model in RUN (a run directory or a checkpoint), streamed to stdout."""
    from ..model import load

    sampling = sampling_given(flags)
    model = load(run, device_or_env(device), dtype)
    model.check_sampling(**sampling)  # before anything is printed
    state = None
    state_path = Path(continue_file) if continue_file else None
    if state_path is not None and state_path.exists():
        try:
            state = model.load_state(state_path.read_bytes())
        except GrufinityError as e:
            raise type(e)(f"{state_path}: {e}") from e
    if prompt_file:
        prompt = Path(prompt_file).read_text(encoding="utf-8", errors="replace")
    elif prompt is not None:
        prompt = unescape(prompt)
    if prompt is None:
        prompt = "" if state is not None else (model.config.get("sample_prompt") or "\n")
    on_piece, close = writer(sys.stdout.write, sys.stdout.flush)
    sys.stdout.write(prompt)
    sys.stdout.flush()
    try:
        _, state = model.generate_bytes(prompt, state=state, on_piece=on_piece, **sampling)
    except KeyboardInterrupt:
        close()
        sys.stdout.write("\n")
        sys.exit(130)
    close()
    if state_path is not None:
        write_atomically(state_path, model.save_state(state))
    else:
        sys.stdout.write("\n")


CHAT_HELP = """commands:
  /reset        forget the conversation (start from a fresh state)
  /temp X       set the temperature (0 = greedy)
  /topk N       sample from the N most likely tokens (0 = off)
  /help         show this help
  /quit         leave (so does Ctrl-D)"""


@main.command()
@click.argument("run", type=str)
@sampling_options
def chat(run: str, device: Optional[str], dtype: Optional[str], **flags: Any) -> None:
    """Talk with the model in RUN: each line you type is fed to the model (with its newline) and
    the model's continuation is printed, until a stop string (default: a newline). Every turn
    continues the same recurrent state, so the whole conversation is the context.

    \b
    /reset  /temp X  /topk N  /help  /quit   (Ctrl-D also quits)

    Reads standard input line by line, so it also takes a script from a pipe.
    """
    from ..model import load

    sampling = sampling_given(flags)
    sampling.setdefault("stop", ["\n"])
    model = load(run, device_or_env(device), dtype)
    model.check_sampling(**sampling)
    interactive = sys.stdin.isatty()

    def note(text: str) -> None:
        click.echo(text, err=True)

    if interactive:
        note(f"chatting with {model.checkpoint} ({model.num_params:,} parameters); /help for commands, Ctrl-D to quit")
    state = None
    while True:
        try:
            if interactive:
                line = input("> ")
            else:
                line = sys.stdin.readline()
                if line == "":
                    break
                line = line.rstrip("\r\n")
        except EOFError:
            if interactive:
                note("")
            break
        except KeyboardInterrupt:
            note("")
            sys.exit(130)
        command = line.strip()
        if command.startswith("/"):
            name, _, arg = command.partition(" ")
            arg = arg.strip()
            if name in ("/quit", "/exit"):
                break
            if name == "/help":
                note(CHAT_HELP)
            elif name == "/reset":
                state = None
                note("(state reset)")
            elif name in ("/temp", "/topk"):
                key, kind = ("temperature", float) if name == "/temp" else ("top_k", int)
                try:
                    value = kind(arg)
                    model.check_sampling(**{**sampling, key: value})
                except (ValueError, GrufinityError) as e:
                    message = str(e) if isinstance(e, GrufinityError) else f"{name} needs a number, got {arg!r}"
                    note(f"error: {message}")
                    continue
                sampling[key] = value
                note(f"({key} = {value})")
            else:
                note(f"unknown command {name}; /help lists the commands")
            continue
        on_piece, close = writer(sys.stdout.write, sys.stdout.flush)
        try:
            _, state = model.generate_bytes(line + "\n", state=state, on_piece=on_piece, **sampling)
        except KeyboardInterrupt:
            note("(interrupted)")
        close()
        sys.stdout.write("\n")
        sys.stdout.flush()
