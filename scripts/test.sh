#!/usr/bin/env bash
# The test command (after `pip install '.[test]'`): the Rust core's tests, the type stubs of the
# compiled module against the module itself, then the Python suite (examples included).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -p grufinity
python -m mypy.stubtest grufinity._grufinity
python -m pytest -q tests
