"""HTTP-level tests of ``grufinity serve`` (the app in a thread on a loopback port): runs only
under the root (no traversal, no symlinks out), caps, sessions, Stop, bad checkpoints, auth."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import clean_env, grufinity_exe
from webtools import Server, call, copy_run, need, stream

need("fastapi", "pip install '.[web]'")
need("uvicorn", "pip install '.[web]'")

import grufinity  # noqa: E402
from grufinity.web import create_app  # noqa: E402
from grufinity.web.limits import Limits  # noqa: E402

LIMITS = Limits(max_prompt_bytes=1000, max_new_tokens=1_000_000, max_concurrent=1, max_inspect_bytes=500)


@pytest.fixture(scope="module")
def root(tmp_path_factory, trained) -> Path:
    """tiny (a good run), broken (truncated weights), leaky (config.json links out), leaky-ckpt
    (its best checkpoint links out), and escape (a link to a run outside the root)."""
    base = tmp_path_factory.mktemp("web")
    root, outside = base / "runs", base / "outside"
    root.mkdir()
    src = trained["run_dir"]
    copy_run(src, root / "tiny")
    copy_run(src, outside / "secret")
    broken = copy_run(src, root / "broken")
    weights = broken / "checkpoints" / "step-3" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    leaky = copy_run(src, root / "leaky")
    (leaky / "config.json").unlink()
    (leaky / "config.json").symlink_to(outside / "secret" / "config.json")
    leaky_ckpt = copy_run(src, root / "leaky-ckpt")
    (leaky_ckpt / "checkpoints" / "best").unlink(missing_ok=True)
    (leaky_ckpt / "checkpoints" / "best").symlink_to(outside / "secret" / "checkpoints" / "step-3")
    (root / "escape").symlink_to(outside / "secret")
    half = root / "tiny" / "checkpoints"
    (half / ".tmp-step-9-1").mkdir()  # a checkpoint being written
    (half / "step-9").mkdir()  # a directory without trainer.json: never complete
    (half / "step-9" / "model.safetensors").write_bytes(b"partial")
    return root


@pytest.fixture(scope="module")
def port(root) -> int:
    with Server(create_app(root, limits=LIMITS)) as server:
        yield server.port


def generate(port, session=None, **body):
    body = {"run": "tiny", **body}
    return call(port, "/api/generate", body, session=session)


def test_page_info_and_headers(port):
    page = call(port, "/")
    assert page.status == 200 and b"<title>GRUfinity</title>" in page.body
    assert "default-src 'self'" in page.headers["content-security-policy"]
    info = call(port, "/api/info").json()
    assert [k["name"] for k in info["sampling"]][:2] == ["temperature", "top_k"]
    assert {k["name"] for k in info["sampling"]} == {k["name"] for k in grufinity.config.SAMPLING_KEYS}
    assert info["limits"]["max_prompt_bytes"] == 1000
    assert call(port, "/static/js/main.js").status == 200


def test_only_runs_under_the_root_are_listed(port):
    names = {r["name"] for r in call(port, "/api/runs").json()}
    assert names == {"tiny", "broken", "leaky", "leaky-ckpt"}  # not "escape", which links out
    tiny = next(r for r in call(port, "/api/runs").json() if r["name"] == "tiny")
    assert tiny["checkpoints"] == ["step-3"]  # not the half-written step-9 or the temporary dir


@pytest.mark.parametrize("name", ["../outside/secret", "..", "tiny/../../outside/secret", "escape", "/etc",
                                  "%2e%2e%2foutside%2fsecret", "tiny/checkpoints", ""])
def test_traversal_refused(port, root, name):
    for reply in (call(port, "/api/runs/" + name),
                  generate(port, run=name, prompt="a", sampling={"max_new_tokens": 1}),
                  call(port, "/api/inspect", {"run": name, "text": "a"})):
        assert reply.status in (403, 404), (name, reply.status, reply.body)
        assert list(reply.json()) == ["error"]  # nothing of the run outside
    absolute = str(root.parent / "outside" / "secret")
    assert generate(port, run=absolute, prompt="a").status == 404


def test_static_traversal_refused(port):
    for path in ("/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/app.py", "/static/..%2f..%2fapp.py"):
        reply = call(port, path)
        assert reply.status == 404 and b"root:" not in reply.body, path


def test_symlinks_out_of_a_run_refused(port):
    reply = call(port, "/api/runs/leaky")
    assert reply.status == 403 and "points outside the run" in reply.error
    reply = generate(port, run="leaky-ckpt", checkpoint="best", prompt="a", sampling={"max_new_tokens": 1})
    assert reply.status == 403 and "outside the run" in reply.error


def test_half_written_checkpoint_is_not_served(port):
    reply = generate(port, checkpoint="step-9", prompt="a", sampling={"max_new_tokens": 1})
    assert reply.status == 404 and "no complete checkpoint step-9" in reply.error
    assert generate(port, checkpoint="../../x", prompt="a").status == 404


def test_caps_refused_with_a_message(port):
    reply = generate(port, prompt="x" * 1001)
    assert reply.status == 413 and "at most 1,000" in reply.error and "--max-prompt-bytes" in reply.error
    reply = generate(port, prompt="a", sampling={"max_new_tokens": 1_000_001})
    assert reply.status == 422 and "cap of 1,000,000" in reply.error
    reply = generate(port, prompt="a", sampling={"beams": 9})
    assert reply.status == 422 and "beams" in reply.error
    reply = call(port, "/api/inspect", {"run": "tiny", "text": "y" * 501})
    assert reply.status == 413 and "--max-inspect-bytes" in reply.error
    big = json.dumps({"run": "tiny", "prompt": "z" * 100_000}).encode()
    reply = call(port, "/api/generate", raw=big, headers={"Content-Type": "application/json"})
    assert reply.status == 413 and "limit" in reply.error
    chunked = call(port, "/api/generate", raw=iter([big[:50_000], big[50_000:]]),
                   headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert chunked.status == 413
    reply = call(port, "/api/generate", raw=b'{"run": "tiny"}', headers={"Content-Type": "text/plain"})
    assert reply.status == 415


def test_bad_values_named(port):
    reply = generate(port, prompt="a", sampling={"temperature": "hot"})
    assert reply.status == 422 and "temperature" in reply.error
    reply = generate(port, prompt="a", dtype="f16")
    assert reply.status == 422 and "dtype" in reply.error
    reply = generate(port, prompt="a", sampling={"bogus": 1})
    assert reply.status == 422 and "bogus" in reply.error


def test_bad_checkpoint_is_an_error_not_a_crash(port):
    reply = generate(port, run="broken", prompt="a", sampling={"max_new_tokens": 2})
    assert reply.status == 422 and reply.error.startswith("cannot load checkpoint broken/step-3")
    assert call(port, "/api/inspect", {"run": "broken", "text": "ab"}).status == 422
    assert generate(port, prompt="a", sampling={"max_new_tokens": 2}).status == 200  # still serving


def test_generation_matches_cli_and_state_continues(port, root):
    sampling = {"max_new_tokens": 24, "temperature": 0.9, "seed": 5}
    lines = generate(port, prompt="The quick", sampling=sampling).lines()
    assert lines[0]["type"] == "start" and lines[-1]["type"] == "done"
    text = "".join(m["text"] for m in lines if m["type"] == "text")
    cli = subprocess.run([grufinity_exe(), "generate", str(root / "tiny"), "-p", "The quick", "-n", "24",
                          "--temperature", "0.9", "--seed", "5"], capture_output=True, env=clean_env(), timeout=60)
    assert cli.stdout.decode("utf-8", errors="replace") == "The quick" + text + "\n"
    assert lines[-1]["tokens_seen"] == lines[-1]["prompt_tokens"] + 24
    # One session in two turns writes what another writes in one: each keeps its own state.
    first = generate(port, prompt="The quick", sampling={**sampling, "max_new_tokens": 10})
    sid = first.session
    second = generate(port, sid, prompt="", sampling={**sampling, "max_new_tokens": 14})
    halves = "".join(m.get("text", "") for m in first.lines() + second.lines())
    assert halves == text
    assert call(port, "/api/session", session=sid).json()["tokens_seen"] == lines[-1]["tokens_seen"]
    assert call(port, "/api/session").json()["tokens_seen"] == 0  # a new session starts fresh
    assert call(port, "/api/reset", {}, session=sid).json()["tokens_seen"] == 0


def test_concurrency_cap_busy_session_and_stop(port):
    lines = stream(port, "/api/generate", {"run": "tiny", "prompt": "a", "sampling": {"max_new_tokens": 1_000_000}})
    sid = next(lines)["session"]
    assert next(lines)["type"] == "start"
    assert next(lines)["type"] == "text"  # generating now, holding the only slot
    other = generate(port, prompt="b", sampling={"max_new_tokens": 2})
    assert other.status == 429 and "--max-concurrent 1" in other.error
    again = generate(port, sid, prompt="c", sampling={"max_new_tokens": 2})
    assert again.status == 409 and "Stop" in again.error
    assert call(port, "/api/stop", {}, session=sid).json() == {"stopping": True}
    done = [m for m in lines if m["type"] in ("done", "error")]
    assert done[-1]["type"] == "done" and done[-1]["finish"] == "cancelled"
    assert 0 < done[-1]["generated"] < 1_000_000
    assert generate(port, prompt="b", sampling={"max_new_tokens": 2}).status == 200


def test_inspect_one_value_per_token(port):
    text = "héllo wörld"
    r = call(port, "/api/inspect", {"run": "tiny", "text": text}).json()
    n = len(r["tokens"])
    assert n == len(text.encode()) and len(r["pieces"]) == len(r["surprise"]) == n
    assert "".join(r["pieces"]) == text
    assert r["surprise"][0] is None and all(isinstance(s, float) for s in r["surprise"][1:])
    assert len(r["gates"]) == 1 and all(0 < z < 1 for z in r["gates"][0])
    assert call(port, "/api/inspect", {"run": "tiny", "text": ""}).status == 422


def test_run_detail(port):
    run = call(port, "/api/runs/tiny").json()
    assert [p[0] for p in run["curves"]["loss"]] == [1, 2, 3]
    assert run["config"]["model"]["dim"] == 32 and run["training"] is False
    assert call(port, "/api/nowhere").status == 404


def test_host_header_checked(port):
    from grufinity.web.middleware import host_name

    assert call(port, "/api/runs", headers={"Host": "evil.example"}).status == 400
    assert call(port, "/api/runs", headers={"Host": "127.0.0.1.evil.example:80"}).status == 400
    assert call(port, "/api/runs", headers={"Host": f"localhost:{port}"}).status == 200
    assert host_name(b"[::1]:7860") == "[::1]" and host_name(b"LocalHost:1") == "localhost"


def test_auth_enforced(root):
    with Server(create_app(root, auth="ann:pa:ss")) as server:
        for path in ("/", "/api/runs", "/static/js/main.js"):
            reply = call(server.port, path)
            assert reply.status == 401 and reply.headers["www-authenticate"].startswith("Basic")
            assert call(server.port, path, auth="ann:wrong").status == 401
            assert call(server.port, path, auth="ann:pa:ss").status == 200
        assert call(server.port, "/api/generate", {"run": "tiny"}).status == 401


def test_a_run_being_trained_reads_consistently(tmp_path, corpus):
    """While a training process holds the run (paused between steps), the server shows it as
    training, its curve so far, and generates from its newest complete checkpoint."""
    from test_api import tiny_config

    paused, resume = threading.Event(), threading.Event()

    def on_event(e):
        if e["event"] == "step" and e["step"] == 4:
            paused.set()
            resume.wait(30)

    cfg = tiny_config(corpus, tmp_path, "live", max_steps=6, save_every=2)
    trainer = threading.Thread(target=grufinity.train, args=(cfg, on_event), daemon=True)
    trainer.start()
    try:
        assert paused.wait(60)
        with Server(create_app(tmp_path, limits=LIMITS)) as server:
            run = call(server.port, "/api/runs/live").json()
            assert run["training"] is True and len(run["curves"]["loss"]) >= 3
            reply = generate(server.port, run="live", checkpoint="last", prompt="a", sampling={"max_new_tokens": 3})
            assert reply.status == 200 and reply.lines()[0]["checkpoint"] in ("step-2", "step-4")
    finally:
        resume.set()
        trainer.join(60)


def test_cli_errors(tmp_path):
    def serve(*args, env=None):
        return subprocess.run([grufinity_exe(), "serve", *map(str, args)], capture_output=True, text=True,
                              env=env or clean_env(), timeout=60)

    missing = serve(tmp_path / "nope")
    assert missing.returncode == 1 and missing.stderr.startswith("error: ") and "no such directory" in missing.stderr
    assert "USER:PASS" in serve(tmp_path, "--auth", "nopassword").stderr
    no_extra = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.modules['fastapi'] = None; from grufinity.cli import main; main(['serve'])"],
        capture_output=True, text=True, env=clean_env(), timeout=60)
    assert no_extra.stderr.strip() == "error: grufinity serve needs the web extra: pip install 'grufinity[web]'"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = serve(tmp_path, "--port", taken.getsockname()[1])
    assert busy.returncode == 1 and "cannot listen on 127.0.0.1" in busy.stderr and "--port" in busy.stderr


def test_exposure_warning():
    from grufinity.cli.serve import exposure_warning, is_loopback

    assert "WITHOUT --auth" in exposure_warning("0.0.0.0", None)
    assert "HTTPS" in exposure_warning("0.0.0.0", "a:b")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        assert is_loopback(s)
