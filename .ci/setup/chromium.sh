#!/usr/bin/env bash
# Chromium for the HTML report's browser test (tests/test_html_report.py, slow): it loads the
# page headless, reads the rendered DOM and takes a screenshot. Idempotent: installs only when
# no chromium is on PATH.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    echo "chromium: $( (chromium --version || chromium-browser --version) 2>/dev/null | head -1)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium >/dev/null
echo "chromium: $(chromium --version 2>/dev/null | head -1)"
