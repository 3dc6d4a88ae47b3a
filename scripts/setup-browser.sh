#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/test_web.py drive it with Playwright from
# PyPI; no browser is ever downloaded by Playwright itself). Idempotent.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
echo "setup: installing Debian's chromium for the browser tests"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium \
  fonts-dejavu-core
