#!/usr/bin/env bash
# Installs everything faceledger needs on a fresh Debian machine, idempotently:
# system packages (OpenBLAS for dlib, cmake to build it), a virtualenv in .venv with the
# hash-locked dependencies (requirements.lock), and faceledger itself (editable).
# dlib is compiled from its sdist against OpenBLAS (~10 min the first time); pip caches the
# built wheel in ~/.cache/pip, so later runs on the same machine take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(libopenblas-dev liblapack-dev cmake build-essential)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY="$cand"; break
    fi
  done
fi
[ -n "$PY" ] || { echo "setup: Python 3.11 is required (the lock file is for 3.11)" >&2; exit 1; }

[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.faceledger-lock-sha256
want=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing locked dependencies (dlib compiles on first install: ~10 min)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes \
    -r requirements.lock
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
.venv/bin/python -c 'import dlib, faiss; print(f"setup: ok (dlib {dlib.__version__}, BLAS: {dlib.DLIB_USE_BLAS})")'
