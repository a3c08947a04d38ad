#!/usr/bin/env bash
# Debian's chromium and chromium-driver for tests/test_serve_browser.py, installed with apt-get when missing.
# Idempotent and quiet. Without apt-get it says so and returns 0: in CI the browser test then fails loudly.
set -uo pipefail
if command -v chromium >/dev/null && { command -v chromedriver >/dev/null || [ -x /usr/bin/chromedriver ]; }; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "[browser-deps] no apt-get here: chromium/chromium-driver missing, the browser test will fail" >&2
  exit 0
fi
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
$SUDO apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null \
  && echo "[browser-deps] installed $(chromium --version 2>/dev/null)" \
  || echo "[browser-deps] apt-get could not install chromium chromium-driver: the browser test will fail" >&2
exit 0
