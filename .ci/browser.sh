#!/usr/bin/env bash
# Headless Chromium and its WebDriver (Debian's `chromium` and `chromium-driver`) for the
# browser tests of `grufinity serve` (tests/test_web_browser.py). Needs root and apt-get; a
# machine that already has both is left alone. Prints how long the installation took.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    echo "== chromium already installed: $(chromium --version 2>/dev/null) =="
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "warning: cannot install chromium (needs root and apt-get); browser tests will skip outside CI" >&2
    exit 0
fi
start=$(date +%s)
echo "== installing chromium and chromium-driver =="
install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver fonts-dejavu-core >/dev/null
}
# Package lists fresh from an earlier step are reused; stale ones are refreshed on failure.
if ! apt-cache show chromium-driver >/dev/null 2>&1 || ! install; then
    apt-get update -qq
    install
fi
echo "== chromium installed in $(( $(date +%s) - start ))s: $(chromium --version 2>/dev/null) =="
