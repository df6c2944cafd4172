#!/usr/bin/env bash
# The test command: Rust core tests, then the Python suite against the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -p grufinity
python -m pytest -q tests
