"""Each setting's default and choice list is declared once, in the Rust core's schema: this test
fails if the Python package writes a setting's default or its choice list again (the Rust
crates have their twin in crates/grufinity/tests/declared_once.rs)."""

from __future__ import annotations

import ast
from pathlib import Path

import grufinity
from grufinity.config import KEYS, LOAD_KEYS, SAMPLING_KEYS

PACKAGE = Path(grufinity.__file__).resolve().parent
ALL_KEYS = {k["name"]: k for k in [*KEYS, *SAMPLING_KEYS, *LOAD_KEYS]}


def _literal(node: ast.AST) -> object:
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return ast  # not a literal: never equal to a default


def declarations(tree: ast.AST) -> list[tuple[str, object, int]]:
    """(name, literal value, line) of every place that gives a setting-named thing a literal:
    keyword arguments and parameter defaults, annotated fields, dict entries, ``default=`` of
    a click option named after a key."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in ALL_KEYS:
            found.append((node.arg, _literal(node.value), node.value.lineno))
        elif isinstance(node, ast.arguments):
            args = node.args + node.kwonlyargs
            defaults = [None] * (len(node.args) - len(node.defaults)) + node.defaults + node.kw_defaults
            for a, d in zip(args, defaults):
                if d is not None and a.arg in ALL_KEYS:
                    found.append((a.arg, _literal(d), d.lineno))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            if node.target.id in ALL_KEYS:
                found.append((node.target.id, _literal(node.value), node.lineno))
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value in ALL_KEYS:
                    found.append((k.value, _literal(v), v.lineno))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            flag = str(node.args[0].value).split("/")[0]
            name = flag[2:].replace("-", "_") if flag.startswith("--") else None
            for kw in node.keywords:
                if name in ALL_KEYS and kw.arg == "default" and _literal(kw.value) is not None:
                    found.append((name, _literal(kw.value), kw.value.lineno))
    return found


def choice_lists(tree: ast.AST) -> list[tuple[str, int]]:
    """(key, line) of every list or tuple literal holding two or more choices of one key."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)):
            words = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            for key in ALL_KEYS.values():
                if key["kind"] == "choice" and len(words & set(key["choices"])) >= 2:
                    found.append((key["name"], node.lineno))
    return found


def test_no_default_or_choice_list_is_declared_in_python():
    problems = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 8
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        rel = path.relative_to(PACKAGE)
        for name, value, line in declarations(tree):
            if value is not ast and value == ALL_KEYS[name]["default"]:
                problems.append(f"{rel}:{line}: `{name}` = {value!r} repeats the core's default")
        problems += [f"{rel}:{line}: the choices of `{name}` written out" for name, line in choice_lists(tree)]
    assert not problems, "\n".join(problems)


def test_the_check_sees_a_second_declaration():
    tree = ast.parse(
        "def f(max_new_tokens=256): pass\n"
        "x = {'chunk_len': 128}\n"
        "click.option('--dim', default=128)\n"
        "y = ('cosine', 'linear')\n"
    )
    names = {name for name, value, _ in declarations(tree) if value == ALL_KEYS[name]["default"]}
    assert names == {"max_new_tokens", "chunk_len", "dim"}
    assert [n for n, _ in choice_lists(tree)] == ["schedule"]


def test_flags_show_the_cores_defaults(tmp_path):
    from click.testing import CliRunner

    from grufinity.cli import main

    text = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    for name in ("chunk_len", "lr", "dim", "eval_every"):
        default = ALL_KEYS[name]["default"]
        flag = "--" + name.replace("_", "-")
        own = text[text.index(flag):]
        own = own[: own.index(" --", len(flag))]
        assert f"[default: {default:g}]" in own if isinstance(default, float) else f"[default: {default}]" in own, own
