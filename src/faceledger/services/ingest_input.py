"""What to enrol: a folder of ``<subject-ref>/<image>`` or a CSV/JSONL manifest.

Manifest columns (CSV header or JSON keys): ``path`` (relative to the manifest's folder, or
absolute), ``subject_ref``, optional ``display_name``. A bad row does not stop the batch: it
becomes an ``invalid`` item in the report, with the row number and what is wrong.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from faceledger import errors

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"})
MAX_REF_LEN = 200


@dataclass(frozen=True, slots=True)
class IngestItem:
    """One file to enrol, or (``problem`` set) one row that cannot be used."""

    label: str
    path: Path | None
    subject_ref: str
    display_name: str | None = None
    problem: str | None = None


def _check_ref(ref: str) -> str | None:
    if not ref.strip():
        return "subject_ref is empty"
    if len(ref) > MAX_REF_LEN:
        return f"subject_ref is longer than {MAX_REF_LEN} characters"
    return None


def from_folder(root: Path) -> list[IngestItem]:
    items: list[IngestItem] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(sub.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                items.append(IngestItem(f"{sub.name}/{f.name}", f, sub.name))
    loose = [f for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    for f in sorted(loose):
        items.append(IngestItem(f.name, None, "", problem=(
            "image is not inside a <subject-ref>/ folder, so its subject is unknown")))
    return items


def _row_item(n: int, row: dict[str, object], base: Path) -> IngestItem:
    label = f"row {n}"
    path_val = row.get("path")
    ref_val = row.get("subject_ref")
    name_val = row.get("display_name")
    if not isinstance(path_val, str) or not path_val.strip():
        return IngestItem(label, None, "", problem="missing 'path'")
    label = f"row {n} ({path_val})"
    if not isinstance(ref_val, str):
        return IngestItem(label, None, "", problem="missing 'subject_ref'")
    problem = _check_ref(ref_val)
    if problem:
        return IngestItem(label, None, ref_val, problem=problem)
    path = Path(path_val)
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        return IngestItem(label, None, ref_val, problem=f"file not found: {path}")
    display = name_val if isinstance(name_val, str) and name_val.strip() else None
    return IngestItem(label, path, ref_val.strip(), display)


def from_manifest(manifest: Path) -> list[IngestItem]:
    base = manifest.parent
    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.ManifestError(f"cannot read manifest {manifest}: {exc}") from exc
    items: list[IngestItem] = []
    if manifest.suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                items.append(IngestItem(f"row {n}", None, "", problem=f"invalid JSON: {exc}"))
                continue
            if not isinstance(row, dict):
                items.append(IngestItem(f"row {n}", None, "", problem="not a JSON object"))
                continue
            items.append(_row_item(n, row, base))
        return items
    if manifest.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        fields = set(reader.fieldnames or [])
        if not {"path", "subject_ref"} <= fields:
            raise errors.ManifestError(
                f"manifest {manifest.name} needs a header with 'path' and 'subject_ref' "
                f"columns; found {sorted(fields)}")
        for n, row in enumerate(reader, start=2):
            items.append(_row_item(n, dict(row), base))
        return items
    raise errors.ManifestError(
        f"{manifest.name}: a manifest must be .csv or .jsonl (or pass a folder)")


def collect(path: Path) -> list[IngestItem]:
    if path.is_dir():
        return from_folder(path)
    if path.is_file():
        return from_manifest(path)
    raise errors.InvalidRequest(f"{path} is neither a folder nor a manifest file")
