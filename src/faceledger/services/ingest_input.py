"""What to enrol: a folder of ``<subject-ref>/<image>`` or a CSV/JSONL manifest.

Manifest columns (CSV header or JSON keys): ``path`` (relative to the manifest's folder, or
absolute), ``subject_ref``, optional ``display_name``. A bad row does not stop the batch: it
becomes an ``invalid`` item in the report (``problem`` and ``code`` set), labelled with the
line the row starts on. Subject references and display names are checked by
:mod:`faceledger.refs` on every path. The rules are in ``docs/references.md``.
"""

from __future__ import annotations

import codecs
import csv
import errno
import io
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from faceledger import errors
from faceledger.refs import MAX_REF_LEN, normalise_display_name, normalise_ref, safe_text

__all__ = [
    "MAX_MANIFEST_BYTES",
    "MAX_REF_LEN",
    "IngestItem",
    "collect",
    "from_folder",
    "from_manifest",
]

#: Manifests over this size are refused whole (ManifestError), before they are parsed.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
CSV_SUFFIXES = frozenset({".csv"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})

# The ``code`` of an invalid item: why it was not enrolled.
CODE_REF_INVALID = errors.InvalidReference.code  # subject_ref_invalid (also display names)
CODE_ROW_INVALID = errors.ManifestError.code  # manifest_invalid: missing field, bad JSON...
CODE_FILE_NOT_FOUND = "file_not_found"  # missing file, broken symbolic link
CODE_FILE_UNREADABLE = "file_unreadable"  # permission denied, symlink loop, name too long
CODE_FILE_INVALID = errors.InvalidFile.code  # file_invalid: FIFO, socket, device, folder
CODE_OUTSIDE = "path_outside_manifest"  # confine=True and the path resolves outside
CODE_HIDDEN = "hidden_file"
CODE_NESTED = "nested_folder"
CODE_EMPTY_FOLDER = "empty_folder"
CODE_NO_SUBJECT = "subject_unknown"  # a file in the root folder, outside any subject folder

_LABEL_PATH_LEN = 120  # how much of a path a label or a reason shows


@dataclass(frozen=True, slots=True)
class IngestItem:
    """One file to enrol, or (``problem`` set) one entry that cannot be used.

    For an invalid item ``subject_ref`` is only for display (escaped with ``safe_text`` and
    shortened when it is not a valid reference) and ``code`` says why (``CODE_*`` above).
    Labels are display text too: they never hold raw control or bidi characters.
    """

    label: str
    path: Path | None
    subject_ref: str
    display_name: str | None = None
    problem: str | None = None
    code: str | None = None


def _shown(text: str, limit: int = MAX_REF_LEN) -> str:
    """Terminal-safe, shortened: for labels and for refs that are not valid."""
    if len(text) > limit:
        return safe_text(text[:limit]) + "…"
    return safe_text(text)


def _invalid(label: str, code: str, problem: str, subject_ref: str = "") -> IngestItem:
    return IngestItem(label, None, subject_ref, problem=problem, code=code)


def _probe(path: Path) -> tuple[str, str, str]:
    """``("file"|"folder"|"bad", code, reason)``; symbolic links are followed."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        link = " (broken symbolic link)" if os.path.islink(path) else ""
        return "bad", CODE_FILE_NOT_FOUND, f"file not found{link}"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "bad", CODE_FILE_UNREADABLE, "symbolic link loop"
        return "bad", CODE_FILE_UNREADABLE, f"cannot read: {exc.strerror or exc}"
    except ValueError:  # a NUL, or a str that cannot be a file name
        return "bad", CODE_FILE_INVALID, "not a valid file name (NUL or unencodable character)"
    if stat.S_ISDIR(st.st_mode):
        return "folder", CODE_FILE_INVALID, "a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "bad", CODE_FILE_INVALID, "not a regular file (a FIFO, socket or device)"
    return "file", "", ""


def _outside(path: Path, base_real: str) -> bool:
    """True when ``path`` (symlinks and ``..`` resolved) is not inside ``base_real``."""
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):
        return True
    return not Path(real).is_relative_to(base_real)


# --- folder mode --------------------------------------------------------------------------
def _sorted_entries(folder: Path) -> list[Path]:
    return sorted(folder.iterdir(), key=lambda p: p.name)


def from_folder(root: Path, *, confine: bool = False) -> list[IngestItem]:
    """Every entry of ``root/<subject-ref>/`` as an item; what cannot be enrolled, invalid.

    Hidden entries of the root (``.git``, ``.DS_Store``) are skipped silently. With
    ``confine``, a file whose real path lies outside ``root`` is invalid.
    """
    try:
        entries = _sorted_entries(root)
    except OSError as exc:
        raise errors.InvalidRequest(
            f"cannot read folder {_shown(str(root))}: {exc.strerror or exc}") from exc
    base_real = os.path.realpath(root) if confine else None
    items: list[IngestItem] = []
    loose: list[IngestItem] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        kind, code, reason = _probe(entry)
        label = _shown(entry.name)
        if kind == "folder":
            items.extend(_subject_folder(entry, base_real))
        elif kind == "bad":
            loose.append(_invalid(label, code, reason))
        else:
            loose.append(_invalid(label, CODE_NO_SUBJECT, (
                "file is not inside a <subject-ref>/ folder, so its subject is unknown")))
    return items + loose


def _subject_folder(sub: Path, base_real: str | None) -> list[IngestItem]:
    folder_label = _shown(sub.name)
    ref_problem: str | None = None
    try:
        ref = normalise_ref(sub.name)
    except errors.InvalidReference as exc:
        ref = folder_label
        ref_problem = f"folder name is not a valid subject reference: {exc.message}"
    if base_real is not None and _outside(sub, base_real):
        return [_invalid(f"{folder_label}/", CODE_OUTSIDE, "folder outside the given folder "
                         "(symbolic link)", ref)]
    try:
        children = _sorted_entries(sub)
    except OSError as exc:
        return [_invalid(f"{folder_label}/", CODE_FILE_UNREADABLE,
                         f"cannot read folder: {exc.strerror or exc}", ref)]
    if not children:
        return [_invalid(f"{folder_label}/", CODE_EMPTY_FOLDER,
                         "empty folder: no image to enrol", ref)]
    items: list[IngestItem] = []
    for f in children:
        label = f"{folder_label}/{_shown(f.name)}"
        kind, code, reason = _probe(f)
        if f.name.startswith("."):
            what = "folder" if kind == "folder" else "file"
            items.append(_invalid(label, CODE_HIDDEN, f"hidden {what} skipped", ref))
        elif kind == "folder":
            items.append(_invalid(label, CODE_NESTED,
                                  "nested folder: only <subject-ref>/<image> is read", ref))
        elif kind == "bad":
            items.append(_invalid(label, code, reason, ref))
        elif ref_problem is not None:
            items.append(_invalid(label, CODE_REF_INVALID, ref_problem, ref))
        elif base_real is not None and _outside(f, base_real):
            items.append(_invalid(label, CODE_OUTSIDE,
                                  "file outside the given folder (symbolic link)", ref))
        else:  # confined: the resolved path is what gets read, as for manifests
            items.append(IngestItem(label, f if base_real is None else
                                    Path(os.path.realpath(f)), ref))
    return items


# --- manifests ----------------------------------------------------------------------------
def _read_manifest(manifest: Path) -> str:
    """The manifest's text: a regular file, at most MAX_MANIFEST_BYTES, UTF-8 (BOM allowed)."""
    name = _shown(manifest.name)
    try:
        # O_NONBLOCK: opening a FIFO must not hang; it is then refused as not regular.
        fd = os.open(manifest, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, ValueError) as exc:
        raise errors.ManifestError(f"cannot read manifest {name}: {_shown(str(exc))}") from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise errors.ManifestError(f"manifest {name} is not a regular file")
        too_big = errors.ManifestError(
            f"manifest {name} is larger than the limit of {MAX_MANIFEST_BYTES} bytes "
            f"({MAX_MANIFEST_BYTES / 2**20:g} MiB); split it into smaller manifests")
        if st.st_size > MAX_MANIFEST_BYTES:
            raise too_big
        try:
            data = f.read(MAX_MANIFEST_BYTES + 1)
        except OSError as exc:
            raise errors.ManifestError(f"cannot read manifest {name}: {exc.strerror}") from exc
        if len(data) > MAX_MANIFEST_BYTES:  # grew since fstat
            raise too_big
    offset = 0
    if data.startswith(codecs.BOM_UTF8):  # as Excel writes "CSV UTF-8": same as utf-8-sig
        data, offset = data[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise errors.ManifestError(
            f"manifest {name} is not UTF-8 text: byte 0x{data[exc.start]:02x} at byte offset "
            f"{exc.start + offset} (line {line}) is not valid UTF-8; save it as UTF-8") from exc


_Row = dict[str, object]


def _csv_rows(text: str, name: str) -> list[tuple[int, _Row | IngestItem]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    out: list[tuple[int, _Row | IngestItem]] = []
    try:
        header = next(reader, None)
        if header is None:
            raise errors.ManifestError(
                f"manifest {name} is empty: its first line must be a header with 'path' and "
                "'subject_ref' columns")
        names = [h.strip() for h in header]
        named = [h for h in names if h]
        if len(set(named)) != len(named):
            dup = sorted({h for h in named if named.count(h) > 1})
            raise errors.ManifestError(
                f"manifest {name}: column {_shown(dup[0])!r} appears more than once in the "
                "header")
        if not {"path", "subject_ref"} <= set(names):
            found = ", ".join(repr(_shown(h, 40)) for h in names[:20])
            raise errors.ManifestError(
                f"manifest {name} needs a header with 'path' and 'subject_ref' columns; "
                f"found [{found}]")
        start = reader.line_num + 1
        for record in reader:
            n, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue  # a blank line, or only commas (as spreadsheets write empty rows)
            if len(record) > len(names):
                out.append((n, _invalid(f"row {n}", CODE_ROW_INVALID, (
                    f"row has {len(record)} fields but the header has {len(names)} "
                    "(a comma in a value that is not quoted?)"))))
                continue
            out.append((n, dict(zip(names, record, strict=False))))
    except csv.Error as exc:
        raise errors.ManifestError(
            f"manifest {name}: cannot parse the CSV at line {reader.line_num}: {exc}") from exc
    return out


def _jsonl_rows(text: str) -> list[tuple[int, _Row | IngestItem]]:
    out: list[tuple[int, _Row | IngestItem]] = []
    # Lines end at LF only (CRLF tolerated): JSON strings may hold U+2028 and friends, which
    # str.splitlines() would wrongly treat as line ends.
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip(" \t\r"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            out.append((n, _invalid(f"row {n}", CODE_ROW_INVALID,
                                    f"invalid JSON at column {exc.colno}: {exc.msg}")))
            continue
        except (ValueError, RecursionError) as exc:  # huge integers, deep nesting
            out.append((n, _invalid(f"row {n}", CODE_ROW_INVALID,
                                    f"invalid JSON: {_shown(str(exc))}")))
            continue
        if not isinstance(row, dict):
            out.append((n, _invalid(f"row {n}", CODE_ROW_INVALID, "not a JSON object")))
            continue
        out.append((n, row))
    return out


def _row_item(n: int, row: _Row, base: Path, base_real: str | None) -> IngestItem:
    label = f"row {n}"
    path_val = row.get("path")
    if path_val is None or (isinstance(path_val, str) and not path_val.strip()):
        return _invalid(label, CODE_ROW_INVALID, "missing 'path'")
    if not isinstance(path_val, str):
        return _invalid(label, CODE_ROW_INVALID,
                        f"'path' must be a string, not {type(path_val).__name__}")
    label = f"row {n} ({_shown(path_val, _LABEL_PATH_LEN)})"
    ref_val = row.get("subject_ref")
    if ref_val is None:
        return _invalid(label, CODE_ROW_INVALID, "missing 'subject_ref'")
    if not isinstance(ref_val, str):
        return _invalid(label, CODE_REF_INVALID,
                        f"'subject_ref' must be a string, not {type(ref_val).__name__}")
    try:
        ref = normalise_ref(ref_val)
    except errors.InvalidReference as exc:
        return _invalid(label, CODE_REF_INVALID, exc.message, _shown(ref_val.strip()))
    name_val = row.get("display_name")
    if name_val is not None and not isinstance(name_val, str):
        return _invalid(label, CODE_REF_INVALID,
                        f"'display_name' must be a string, not {type(name_val).__name__}", ref)
    try:
        display = normalise_display_name(name_val)
    except errors.InvalidReference as exc:
        return _invalid(label, CODE_REF_INVALID, exc.message, ref)
    path = Path(path_val)
    path = path if path.is_absolute() else base / path
    if base_real is not None:
        # Checked before the file's existence, so a server never tells a client whether a
        # file outside the folder exists. The resolved path is what gets read.
        if _outside(path, base_real):
            return _invalid(label, CODE_OUTSIDE, "path outside the manifest's folder", ref)
        path = Path(os.path.realpath(path))
    kind, code, reason = _probe(path)
    if kind != "file":
        where = "" if base_real is not None else f": {_shown(str(path), _LABEL_PATH_LEN)}"
        return _invalid(label, code, reason + where, ref)
    return IngestItem(label, path, ref, display)


def from_manifest(manifest: Path, *, confine: bool = False) -> list[IngestItem]:
    """The rows of a CSV or JSONL manifest as items (bad rows: invalid items).

    Raises :class:`errors.ManifestError` for a manifest that cannot be used at all: wrong
    suffix, unreadable, over MAX_MANIFEST_BYTES, not UTF-8, no usable CSV header, CSV that
    cannot be parsed. With ``confine``, a row whose path resolves (symlinks, ``..``) outside
    the manifest's folder is invalid; absolute paths are then allowed only inside it.
    """
    suffix = manifest.suffix.lower()
    name = _shown(manifest.name)
    if suffix not in CSV_SUFFIXES | JSONL_SUFFIXES:
        raise errors.ManifestError(
            f"{name}: a manifest must be .csv or .jsonl (or pass a folder)")
    text = _read_manifest(manifest)
    base = manifest.parent
    base_real = os.path.realpath(base) if confine else None
    rows = _csv_rows(text, name) if suffix in CSV_SUFFIXES else _jsonl_rows(text)
    return [row if isinstance(row, IngestItem) else _row_item(n, row, base, base_real)
            for n, row in rows]


def collect(path: Path, *, confine: bool = False) -> list[IngestItem]:
    """A folder (``from_folder``) or a manifest file (``from_manifest``).

    ``confine=False`` (the CLI): manifest paths may point anywhere, absolute ones included.
    ``confine=True`` (the server): nothing outside the manifest's folder (or the given
    folder) is read.
    """
    if path.is_dir():
        return from_folder(path, confine=confine)
    if path.is_file():
        return from_manifest(path, confine=confine)
    raise errors.InvalidRequest(f"{_shown(str(path))} is neither a folder nor a manifest file")
