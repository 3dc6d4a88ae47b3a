"""Writes the API reference, docs/openapi.json, from the app itself (run after changing
routes; tests/test_api.py fails while the file is stale)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from faceledger.api.app import create_app
from faceledger.config import Settings
from faceledger.services.admin import init_store

OUT = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"

with tempfile.TemporaryDirectory() as tmp:
    settings = Settings(home=Path(tmp) / "store")
    init_store(settings)
    spec = create_app(settings, warm=False).openapi()
OUT.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
print(f"wrote {OUT} ({len(spec['paths'])} paths)")
