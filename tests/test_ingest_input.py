"""Parsing what to enrol (folders, CSV, JSONL): pure parsing, no model is loaded."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faceledger import errors
from faceledger.refs import normalise_display_name, normalise_ref
from faceledger.services import ingest_input
from faceledger.services.ingest_input import IngestItem, collect, from_manifest
from tests.conftest import gallery_folder

PGM = b"P5\n40 40\n255\n" + bytes(1600)  # a grey image, as a .pgm file
FORBIDDEN = {"Cc", "Cf", "Cn", "Cs", "Co"}
CODES = {"subject_ref_invalid", "manifest_invalid", "file_not_found", "file_unreadable",
         "file_invalid", "path_outside_manifest", "hidden_file", "nested_folder",
         "empty_folder", "subject_unknown"}


def clean(text: str) -> bool:
    return not {unicodedata.category(ch) for ch in text} & FORBIDDEN


def by_label(items: list[IngestItem]) -> dict[str, IngestItem]:
    return {it.label: it for it in items}


def write(path: Path, data: bytes = PGM) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- folders ------------------------------------------------------------------------------
def test_folder_files_are_items_whatever_their_suffix(tmp_path: Path) -> None:
    """Issue 7: a folder of .pgm images reported '0 enrolled, 0 invalid'."""
    for name in ("a.pgm", "b.PGM", "no_suffix", "notes.txt"):
        write(tmp_path / "Alice" / name)
    items = collect(tmp_path)
    assert [(it.label, it.subject_ref, it.problem) for it in items] == [
        ("Alice/a.pgm", "Alice", None), ("Alice/b.PGM", "Alice", None),
        ("Alice/no_suffix", "Alice", None), ("Alice/notes.txt", "Alice", None)]
    assert all(it.path is not None and it.path.is_file() for it in items)


@pytest.mark.parametrize(("folder", "reason"), [
    ("\x1b[31mRed", "character U+001B (ESCAPE) at position 1 is not allowed"),
    ("ab\u202ecd", "character U+202E (RIGHT-TO-LEFT OVERRIDE) at position 3 is not allowed"),
    ("x" * 250, "is 250 characters long; the limit is 200"),  # 255 bytes: NAME_MAX
    ("=cmd", "may not start with '='"),
    ("Ali\u200bce", "U+200B (ZERO WIDTH SPACE)"),
])
def test_folder_with_a_bad_name_gives_one_invalid_item_per_file(
        tmp_path: Path, folder: str, reason: str) -> None:
    write(tmp_path / folder / "1.jpg")
    write(tmp_path / folder / "2.jpg")
    write(tmp_path / "Bob" / "1.jpg")
    items = collect(tmp_path)
    bad = [it for it in items if it.problem]
    assert len(bad) == 2
    for it in bad:
        assert it.path is None
        assert it.code == "subject_ref_invalid"
        assert "folder name is not a valid subject reference" in it.problem
        assert reason in it.problem
        assert clean(it.label) and clean(it.subject_ref) and clean(it.problem)
    assert [it.subject_ref for it in items if not it.problem] == ["Bob"]


def test_folder_names_are_normalised(tmp_path: Path) -> None:
    write(tmp_path / "Zoe\u0308" / "1.jpg")  # NFD, as macOS writes names
    [item] = collect(tmp_path)
    assert item.problem is None
    assert item.subject_ref == "Zoë"


def test_folder_reports_what_it_does_not_enrol(tmp_path: Path) -> None:
    target = write(tmp_path / "elsewhere" / "real.pgm")
    root = tmp_path / "gallery"
    write(root / "Alice" / "ok.pgm")
    (root / "Alice" / "linked.jpg").symlink_to(target)
    write(root / "Alice" / ".DS_Store", b"junk")
    write(root / "Alice" / "sub" / "deeper.jpg")
    os.mkfifo(root / "Alice" / "fifo.jpg")
    (root / "Alice" / "broken.jpg").symlink_to(tmp_path / "missing.jpg")
    (root / "Alice" / "self.jpg").symlink_to(root / "Alice" / "self.jpg")
    write(root / "loose.pgm")
    write(root / "README")
    write(root / ".hidden_in_root")
    write(root / ".git" / "HEAD", b"ref: refs/heads/main\n")
    (root / "Empty").mkdir()
    items = by_label(collect(root))
    assert items["Alice/ok.pgm"].problem is None
    assert items["Alice/linked.jpg"].path == root / "Alice" / "linked.jpg"
    assert items["Alice/linked.jpg"].problem is None
    expected = {
        "Alice/.DS_Store": ("hidden_file", "hidden file skipped"),
        "Alice/sub": ("nested_folder", "nested folder: only <subject-ref>/<image> is read"),
        "Alice/fifo.jpg": ("file_invalid", "not a regular file"),
        "Alice/broken.jpg": ("file_not_found", "file not found"),
        "Alice/self.jpg": ("file_unreadable", "symbolic link loop"),
        "Empty/": ("empty_folder", "empty folder"),
        "loose.pgm": ("subject_unknown", "not inside a <subject-ref>/ folder"),
        "README": ("subject_unknown", "not inside a <subject-ref>/ folder"),
    }
    for label, (code, reason) in expected.items():
        assert items[label].code == code, label
        assert reason in (items[label].problem or ""), label
        assert items[label].path is None
    assert set(items) == set(expected) | {"Alice/ok.pgm", "Alice/linked.jpg"}


def test_folder_symlink_loops_are_not_followed(tmp_path: Path) -> None:
    write(tmp_path / "Alice" / "1.jpg")
    (tmp_path / "Alice" / "up").symlink_to(tmp_path)  # a loop back to the root
    (tmp_path / "Bob").symlink_to(tmp_path)  # a subject folder that is the root itself
    items = by_label(collect(tmp_path))
    assert items["Alice/up"].code == "nested_folder"
    assert items["Bob/Alice"].code == "nested_folder"
    assert items["Bob/Bob"].code == "nested_folder"
    assert items["Alice/1.jpg"].problem is None
    assert len(items) == 4


def test_folder_of_symlinks_into_shared_data(lfw: Path, tmp_path: Path) -> None:
    """The test galleries (conftest.gallery_folder) keep working."""
    names = ["Aaron_Peirsol", "Gloria_Macapagal_Arroyo"]
    root = gallery_folder(lfw, names, tmp_path / "g")
    items = collect(root)
    assert [(it.label, it.subject_ref, it.problem) for it in items] == [
        (f"{n}/{n}_0001.jpg", n, None) for n in names]


def test_folder_confined(tmp_path: Path) -> None:
    outside = write(tmp_path / "outside.pgm")
    root = tmp_path / "g"
    write(root / "Alice" / "in.pgm")
    (root / "Alice" / "out.pgm").symlink_to(outside)
    write(tmp_path / "other" / "1.pgm")
    (root / "Bob").symlink_to(tmp_path / "other")
    assert all(it.problem is None for it in collect(root))
    items = by_label(collect(root, confine=True))
    assert items["Alice/in.pgm"].problem is None
    assert items["Alice/out.pgm"].code == "path_outside_manifest"
    assert items["Bob/"].code == "path_outside_manifest"
    assert len(items) == 3


# --- CSV ----------------------------------------------------------------------------------
def manifest(tmp_path: Path, name: str, data: bytes | str) -> Path:
    raw = data.encode() if isinstance(data, str) else data
    return write(tmp_path / name, raw)


def test_csv_newline_in_a_quoted_subject_ref_is_refused(tmp_path: Path) -> None:
    """Issue 7: splitlines() silently removed the newline: 'Al<LF>ice' became 'Alice'."""
    write(tmp_path / "a.jpg")
    m = manifest(tmp_path, "m.csv", 'path,subject_ref\n"a.jpg","Al\nice"\n')
    [item] = collect(m)
    assert "U+000A (LINE FEED) at position 3" in (item.problem or "")
    assert item.code == "subject_ref_invalid"
    assert item.label == "row 2 (a.jpg)"
    assert clean(item.subject_ref)


def test_csv_newline_in_a_quoted_display_name_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "a.jpg")
    m = manifest(tmp_path, "m.csv",
                 'path,subject_ref,display_name\r\na.jpg,Alice,"Alice\r\nSmith"\r\n')
    [item] = collect(m)
    assert "display name: character U+000D (CARRIAGE RETURN)" in (item.problem or "")
    assert item.code == "subject_ref_invalid"


def test_csv_row_numbers_are_the_line_where_the_row_starts(tmp_path: Path) -> None:
    write(tmp_path / "a.jpg")
    text = ('path,subject_ref,display_name\n'           # line 1
            'a.jpg,Alice,"Alice\nSmith\nJr"\n'          # lines 2-4
            'missing.jpg,Bob,\n'                        # line 5
            '\n'                                        # line 6: blank
            ',,\n'                                      # line 7: empty spreadsheet row
            '"b\nc.jpg",Carol\n'                        # lines 8-9
            ',Dave\n')                                  # line 10
    items = collect(manifest(tmp_path, "m.csv", text))
    assert [it.label for it in items] == [
        "row 2 (a.jpg)", "row 5 (missing.jpg)", "row 8 (b\\x0ac.jpg)", "row 10"]
    assert items[1].code == "file_not_found"
    assert items[3].problem == "missing 'path'"


def test_csv_with_a_bom_as_excel_writes_it(tmp_path: Path) -> None:
    write(tmp_path / "a.jpg")
    m = manifest(tmp_path, "m.csv", b"\xef\xbb\xbfpath,subject_ref\r\na.jpg,Alice\r\n")
    [item] = collect(m)
    assert (item.problem, item.subject_ref, item.path) == (None, "Alice", tmp_path / "a.jpg")


def test_csv_header_names_are_stripped(tmp_path: Path) -> None:
    write(tmp_path / "a.jpg")
    [item] = collect(manifest(tmp_path, "m.csv", " path , subject_ref \na.jpg, Alice \n"))
    assert (item.problem, item.subject_ref) == (None, "Alice")


@pytest.mark.parametrize(("data", "offset"), [
    (b"path,subject_ref\na.jpg,Andr\xe9\n", 27),
    (b"\xef\xbb\xbfpath,subject_ref\na.jpg,Andr\xe9\n", 30),  # the BOM counts
    (b"path,subject_ref\n\xff", 17),
])
def test_manifest_not_utf8_names_the_byte_offset(
        tmp_path: Path, data: bytes, offset: int) -> None:
    with pytest.raises(errors.ManifestError, match=f"at byte offset {offset} "):
        collect(manifest(tmp_path, "m.csv", data))


def test_jsonl_not_utf8(tmp_path: Path) -> None:
    data = b'{"path": "a.jpg", "subject_ref": "Alice"}\n{"path": "\xc3("}\n'
    with pytest.raises(errors.ManifestError, match=r"byte offset 52 \(line 2\)"):
        collect(manifest(tmp_path, "m.jsonl", data))


def test_csv_field_over_the_csv_limit_is_a_manifest_error(tmp_path: Path) -> None:
    big = "x" * (csv.field_size_limit() + 10)
    m = manifest(tmp_path, "m.csv", f"path,subject_ref\na.jpg,Alice\nb.jpg,{big}\n")
    with pytest.raises(errors.ManifestError, match="at line 3: field larger than field limit"):
        collect(m)


def test_csv_nul_bytes_are_refused_by_the_rules(tmp_path: Path) -> None:
    write(tmp_path / "a.jpg")
    m = manifest(tmp_path, "m.csv", b"path,subject_ref\na.jpg,Al\x00ice\na\x00.jpg,Bob\n")
    first, second = collect(m)
    assert "U+0000 (NULL) at position 3" in (first.problem or "")
    assert first.code == "subject_ref_invalid"
    assert second.label == "row 3 (a\\x00.jpg)"
    assert second.code == "file_invalid"


def test_csv_rows_with_more_fields_than_the_header(tmp_path: Path) -> None:
    write(tmp_path / "a.jpg")
    items = collect(manifest(tmp_path, "m.csv", "path,subject_ref\na.jpg,Smith, John\na.jpg\n"))
    assert "row has 3 fields but the header has 2" in (items[0].problem or "")
    assert items[0].code == "manifest_invalid"
    assert items[1].problem == "missing 'subject_ref'"


@pytest.mark.parametrize(("text", "message"), [
    ("", "is empty"),
    ("file,ref\na.jpg,Alice\n", "needs a header with 'path' and 'subject_ref'"),
    ("path,subject_ref,path\n", "column 'path' appears more than once"),
])
def test_csv_header_problems(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(errors.ManifestError, match=message):
        collect(manifest(tmp_path, "m.csv", text))


def test_manifest_size_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "a.jpg")
    m = manifest(tmp_path, "m.csv", "path,subject_ref\n" + "a.jpg,Alice\n" * 20)
    assert len(collect(m)) == 20
    monkeypatch.setattr(ingest_input, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(errors.ManifestError, match="larger than the limit of 100 bytes"):
        collect(m)
    assert ingest_input.MAX_MANIFEST_BYTES == 100
    monkeypatch.undo()
    assert ingest_input.MAX_MANIFEST_BYTES == 64 * 1024 * 1024


def test_manifest_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "m.csv"
    os.mkfifo(fifo)
    with pytest.raises(errors.ManifestError, match="not a regular file"):
        from_manifest(fifo)


@pytest.mark.parametrize("name", ["m.txt", "m.json", "m"])
def test_manifest_suffix(tmp_path: Path, name: str) -> None:
    with pytest.raises(errors.ManifestError, match=r"must be \.csv or \.jsonl"):
        collect(manifest(tmp_path, name, "path,subject_ref\n"))


def test_manifest_references_and_names_are_normalised(tmp_path: Path) -> None:
    write(tmp_path / "a.jpg")
    text = ("path,subject_ref,display_name\n"
            "a.jpg,  GB/2026/000123 ,  \n"
            "a.jpg,Zoe\u0308,=Zoë Ball\n"
            "a.jpg,=HYPERLINK(\"http://x\"),Eve\n"
            "a.jpg,evil\u202egnp,Eve\n"
            "a.jpg,Mallory,\x1b]0;owned\x07\n")
    items = collect(manifest(tmp_path, "m.csv", text))
    assert (items[0].subject_ref, items[0].display_name) == ("GB/2026/000123", None)
    assert (items[1].subject_ref, items[1].display_name) == ("Zoë", "=Zoë Ball")
    assert "may not start with '='" in (items[2].problem or "")
    assert items[3].subject_ref == "evil\\u202egnp"  # display form only, never stored
    assert "U+202E (RIGHT-TO-LEFT OVERRIDE) at position 5" in (items[3].problem or "")
    assert "display name: character U+001B (ESCAPE)" in (items[4].problem or "")
    assert items[4].subject_ref == "Mallory"
    for it in items:
        assert clean(it.label) and clean(it.subject_ref) and clean(it.problem or "")


def test_manifest_row_that_is_not_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "folder.jpg").mkdir()
    os.mkfifo(tmp_path / "fifo.jpg")
    items = collect(manifest(tmp_path, "m.csv",
                             "path,subject_ref\nfolder.jpg,A\nfifo.jpg,B\nnope.jpg,C\n"))
    assert "a folder, not a file" in (items[0].problem or "")
    assert "not a regular file" in (items[1].problem or "")
    assert [it.code for it in items] == ["file_invalid", "file_invalid", "file_not_found"]


# --- JSONL --------------------------------------------------------------------------------
def test_jsonl_lines_end_at_lf_only(tmp_path: Path) -> None:
    """U+2028 inside a JSON string is not a line end (str.splitlines() thought it was)."""
    write(tmp_path / "a.jpg")
    text = ('{"path": "a.jpg", "subject_ref": "Alice", "note": "x\u2028y\u0085z"}\r\n'
            '{"subject_ref": "Bob"}\n')
    first, second = collect(manifest(tmp_path, "m.jsonl", text))
    assert (first.label, first.problem, first.subject_ref) == ("row 1 (a.jpg)", None, "Alice")
    assert (second.label, second.problem) == ("row 2", "missing 'path'")


@pytest.mark.parametrize(("row", "code", "message"), [
    ({"path": "a.jpg", "subject_ref": 123}, "subject_ref_invalid", "must be a string, not int"),
    ({"path": "a.jpg", "subject_ref": "A", "display_name": 5}, "subject_ref_invalid",
     "'display_name' must be a string, not int"),
    ({"path": ["a.jpg"], "subject_ref": "A"}, "manifest_invalid", "'path' must be a string"),
    ({"path": "a.jpg", "subject_ref": "\ud800"}, "subject_ref_invalid", "U+D800"),
    ({"path": "a\ud800.jpg", "subject_ref": "A"}, "file_invalid", "not a valid file name"),
    ({"path": "a.jpg"}, "manifest_invalid", "missing 'subject_ref'"),
    ({"path": "  ", "subject_ref": "A"}, "manifest_invalid", "missing 'path'"),
])
def test_jsonl_bad_values(tmp_path: Path, row: object, code: str, message: str) -> None:
    write(tmp_path / "a.jpg")
    [item] = collect(manifest(tmp_path, "m.jsonl", json.dumps(row) + "\n"))
    assert message in (item.problem or "")
    assert item.code == code
    assert clean(item.label) and clean(item.subject_ref)


@pytest.mark.parametrize("line", [
    '{"path": "a.jpg", "subject_ref": "A", "n": ' + "1" * 5000 + "}",  # int digit limit
    "[" * 100_000,  # nesting deeper than the recursion limit
    '{"path": "a.jpg"',
    "[1, 2]",
    "\x1c",
], ids=["huge-int", "deep-nesting", "cut-short", "array", "separator"])
def test_jsonl_invalid_lines_are_invalid_rows(tmp_path: Path, line: str) -> None:
    write(tmp_path / "a.jpg")
    text = line + '\n{"path": "a.jpg", "subject_ref": "A"}\n'
    first, second = collect(manifest(tmp_path, "m.jsonl", text))
    assert first.label == "row 1"
    assert first.problem is not None
    assert second.problem is None
    assert first.code == "manifest_invalid"


# --- confinement --------------------------------------------------------------------------
@pytest.fixture
def confined_layout(tmp_path: Path) -> Path:
    outside = write(tmp_path / "outside.jpg")
    base = tmp_path / "upload"
    write(base / "in.jpg")
    write(base / "sub" / "deep.jpg")
    (base / "link_out.jpg").symlink_to(outside)
    (base / "link_in.jpg").symlink_to(base / "in.jpg")
    (base / "dir_out").symlink_to(tmp_path)
    rows = [("in.jpg", "A"), ("sub/../in.jpg", "B"), ("../outside.jpg", "C"),
            ("link_out.jpg", "D"), (str(outside), "E"), (str(base / "in.jpg"), "F"),
            ("link_in.jpg", "G"), ("dir_out/outside.jpg", "H"), ("../nothing.jpg", "I"),
            ("sub/deep.jpg", "J")]
    return manifest(base, "m.csv", "path,subject_ref\n" + "".join(
        f"{p},{r}\n" for p, r in rows))


def test_manifest_unconfined_reads_anywhere(confined_layout: Path) -> None:
    items = {it.subject_ref: it for it in collect(confined_layout)}
    assert {r for r, it in items.items() if it.problem} == {"I"}
    assert items["I"].code == "file_not_found"


def test_manifest_confined_to_its_folder(confined_layout: Path) -> None:
    base = confined_layout.parent
    items = {it.subject_ref: it for it in collect(confined_layout, confine=True)}
    for ref in "CDEHI":  # ../ escape, symlink escapes, absolute path outside
        assert items[ref].code == "path_outside_manifest", ref
        assert items[ref].problem == "path outside the manifest's folder"
    for ref in "ABFGJ":
        assert items[ref].problem is None, ref
        assert items[ref].path is not None
        assert items[ref].path.is_relative_to(base.resolve())
    assert from_manifest(confined_layout, confine=True) == list(items.values())


# --- fuzzing ------------------------------------------------------------------------------
HOSTILE = ["", " ", ",", '"', "'", "\n", "\r", "\r\n", "\x00", "\x1b", "\u202e", "\u2028",
           "\ufeff", "\ud800", "=", "-", "..", "../", "/", "a.jpg", "sub", "fifo", "link",
           "../outside.jpg", "/etc/passwd", "Alice", "Zoe\u0308", "x" * 250, "{", "[", "\\",
           "\t", "#", "\xe9"]
hostile_text = st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=8)),
                        max_size=6).map("".join)
json_value = st.one_of(hostile_text, st.none(), st.integers(), st.booleans(),
                       st.lists(st.integers(), max_size=2), st.dictionaries(
                           st.text(max_size=3), st.integers(), max_size=2))
KEYS = ["path", "subject_ref", "display_name", "other", "Path", ""]
# Values that are plausible on their own, so that hostile values in the other columns of the
# same row are reached (a row is refused at its first problem).
PATHS = ["a.jpg", "sub/b.jpg", "sub/../a.jpg", "../outside.jpg", "link", "fifo", "sub",
         "missing.jpg", "m.csv", "m.jsonl"]
REFS = ["Alice", "GB/2026/000123", "Zoë", "O'Brien (2)", "  Bob  "]
path_text = st.one_of(st.sampled_from(PATHS), hostile_text,
                      st.builds(lambda a, b: a + b, st.sampled_from(PATHS), hostile_text))
ref_text = st.one_of(st.sampled_from(REFS), hostile_text)
name_text = st.one_of(st.just(""), st.sampled_from(REFS), hostile_text)
csv_rows = st.one_of(st.tuples(path_text, ref_text, name_text).map(list),
                     st.tuples(path_text, ref_text).map(list),
                     st.lists(hostile_text, max_size=4))
json_rows = st.one_of(
    st.fixed_dictionaries(
        {"path": st.one_of(path_text, json_value), "subject_ref": st.one_of(ref_text,
                                                                            json_value)},
        optional={"display_name": st.one_of(name_text, json_value), "other": json_value}),
    st.dictionaries(st.sampled_from(KEYS), json_value, max_size=4))


def _csv_bytes(header: list[str], rows: list[list[str]], bom: bool) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return (b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode("utf-8", "surrogatepass")


def _jsonl_bytes(rows: list[dict[str, object]], ensure_ascii: bool) -> bytes:
    text = "\n".join(json.dumps(r, ensure_ascii=ensure_ascii) for r in rows)
    return text.encode("utf-8", "surrogatepass")


csv_manifests = st.builds(
    _csv_bytes,
    st.one_of(st.just(["path", "subject_ref", "display_name"]),
              st.lists(st.sampled_from(KEYS), max_size=4)),
    st.lists(csv_rows, max_size=6), st.booleans())
jsonl_manifests = st.builds(_jsonl_bytes, st.lists(json_rows, max_size=6), st.booleans())
raw_manifests = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda b: b"path,subject_ref,display_name\n" + b, st.binary(max_size=300)),
    st.builds(lambda b: b'{"path": "a.jpg", "subject_ref": "' + b, st.binary(max_size=60)))


def _scratch(tmp: Path) -> None:
    base = tmp / "upload"
    write(base / "a.jpg")
    write(base / "sub" / "b.jpg")
    write(tmp / "outside.jpg")
    os.mkfifo(base / "fifo")
    (base / "link").symlink_to(tmp / "outside.jpg")


@settings(deadline=None, derandomize=True, max_examples=300,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.tuples(st.just(".csv"), st.one_of(csv_manifests, raw_manifests)),
                 st.tuples(st.just(".jsonl"), st.one_of(jsonl_manifests, raw_manifests))),
       st.booleans())
def test_manifest_parsing_fuzz(manifest_case: tuple[str, bytes], confine: bool) -> None:
    suffix, data = manifest_case
    # A fresh folder per example: hypothesis runs many examples in one test call.
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        _scratch(tmp)
        m = write(tmp / "upload" / f"m{suffix}", data)
        try:
            items = collect(m, confine=confine)
        except errors.ManifestError as exc:
            refused: errors.ManifestError | None = exc
        else:
            refused = None
        if refused is not None:
            assert clean(refused.message)
            return
        base = (tmp / "upload").resolve()
        for it in items:
            assert isinstance(it, IngestItem)
            assert clean(it.label) and clean(it.subject_ref)
            if it.problem is None:
                assert it.path is not None and it.path.is_file()
                assert normalise_ref(it.subject_ref) == it.subject_ref
                assert normalise_display_name(it.display_name) == it.display_name
                assert it.code is None
                if confine:
                    assert it.path.resolve().is_relative_to(base)
            else:
                assert it.path is None
                assert it.code in CODES
                assert clean(it.problem)
