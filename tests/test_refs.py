"""The allowed form of subject references and display names, and output escaping."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faceledger import errors, refs

FORBIDDEN = {"Cc", "Cf", "Cn", "Cs", "Co"}

# Characters that are most likely to break something, mixed into random text.
HOSTILE = ["\x00", "\x1b", "\t", "\n", "\r", "\x7f", "\x85", "\x9b", "\u202e", "\u202a",
           "\u2066", "\u2069", "\u200b", "\u200d", "\ufeff", "\u2028", "\u2029", "\ud800",
           "\udcff", "\ue000", "\U000f0000", "\u0378", "=", "+", "-", "@", " ", "\u00a0",
           "\u3000", "e", "\u0301", "\u0308", "A", "/", "_", ".", ":", "#", "'", "(", ")",
           "\u0958", "\u212b", "\uac00", "\u1100", "\u1161", "\u11a8"]

any_text = st.text(
    alphabet=st.one_of(st.characters(exclude_categories=()), st.sampled_from(HOSTILE)),
    max_size=260)
long_text = st.builds(lambda a, n, b: a + "x" * n + b, any_text, st.integers(150, 260),
                      any_text)
TEXT = st.one_of(any_text, long_text)


def categories(text: str) -> set[str]:
    return {unicodedata.category(ch) for ch in text}


@pytest.mark.parametrize("value", [
    "Gloria_Macapagal_Arroyo", "GB/2026/000123", "O'Brien (2)", "case#12:3", "a.b_c d",
    "Zoë Ball", "Владимир Путин", "李小龙", "محمد علي", "ñ", "x" * refs.MAX_REF_LEN, "1",
    "Ng 😀",
])
def test_ordinary_references_are_kept(value: str) -> None:
    assert refs.normalise_ref(value) == value


@pytest.mark.parametrize(("value", "canonical"), [
    ("  Alice  ", "Alice"),
    ("\u3000Alice\u00a0", "Alice"),  # ideographic space, no-break space: whitespace too
    ("Zoe\u0308", "Zoë"),  # NFD (as macOS names folders) -> NFC
    ("\u212b", "\u00c5"),  # ANGSTROM SIGN -> A WITH RING ABOVE
    ("e\u0301" * refs.MAX_REF_LEN, "é" * refs.MAX_REF_LEN),  # length counted after NFC
    (" " * 50 + "x" * refs.MAX_REF_LEN + " " * 50, "x" * refs.MAX_REF_LEN),
])
def test_references_are_normalised(value: str, canonical: str) -> None:
    assert refs.normalise_ref(value) == canonical
    assert refs.normalise_ref(canonical) == canonical


@pytest.mark.parametrize(("value", "message"), [
    ("ab\u202ecd", "character U+202E (RIGHT-TO-LEFT OVERRIDE) at position 3 is not allowed"),
    ("\x1b[31mred", "character U+001B (ESCAPE) at position 1 is not allowed"),
    ("a\x00b", "character U+0000 (NULL) at position 2"),
    ("a\tb", "U+0009 (CHARACTER TABULATION)"),
    ("Al\nice", "U+000A (LINE FEED) at position 3"),
    ("Alice\r", "U+000D (CARRIAGE RETURN) at position 6"),  # not hidden by stripping
    ("\tAlice", "U+0009 (CHARACTER TABULATION) at position 1"),
    ("a\x85b", "U+0085 (NEXT LINE)"),
    ("a\u2066b\u2069", "U+2066 (LEFT-TO-RIGHT ISOLATE) at position 2"),
    ("a\u202ab", "U+202A (LEFT-TO-RIGHT EMBEDDING)"),
    ("Ali\u200bce", "U+200B (ZERO WIDTH SPACE) at position 4"),
    ("\ufeffAlice", "U+FEFF (ZERO WIDTH NO-BREAK SPACE) at position 1"),
    ("a\u2028b", "U+2028 (LINE SEPARATOR)"),
    ("a\ud800", "U+D800 at position 2 is not allowed: surrogate"),
    ("a\ue000", "U+E000 at position 2 is not allowed: private-use"),
    ("a\U000f0000", "U+F0000 at position 2 is not allowed: private-use"),
    ("a\u0378", "U+0378 at position 2 is not allowed: unassigned"),
    ("a\x1bb\x1bc", "at position 2 is not allowed: control character (and 1 more"),
    ("", "subject reference is empty"),
    ("   ", "subject reference is empty"),
    ("x" * (refs.MAX_REF_LEN + 1), "is 201 characters long; the limit is 200"),
    ("=HYPERLINK(\"x\")", "may not start with '='"),
    ("+44", "may not start with '+'"),
    ("-1", "may not start with '-'"),
    ("@SUM(A1)", "may not start with '@'"),
    ("  =1+1", "may not start with '='"),  # checked after stripping
])
def test_bad_references_say_what_is_wrong(value: str, message: str) -> None:
    with pytest.raises(errors.InvalidReference) as exc_info:
        refs.normalise_ref(value)
    assert exc_info.value.code == "subject_ref_invalid"
    assert message in exc_info.value.message
    assert not categories(exc_info.value.message) & FORBIDDEN  # never echoes the raw char


def test_reference_must_be_text() -> None:
    with pytest.raises(errors.InvalidReference, match="must be text, not int"):
        refs.normalise_ref(123)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("", None), ("   ", None), ("  Alice Smith ", "Alice Smith"),
    ("=Smith", "=Smith"), ("-", "-"), ("@handle", "@handle"),  # free text: allowed
    ("Zoe\u0308", "Zoë"), ("d" * refs.MAX_DISPLAY_NAME_LEN, "d" * refs.MAX_DISPLAY_NAME_LEN),
])
def test_display_names(value: str | None, expected: str | None) -> None:
    assert refs.normalise_display_name(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    ("Bob\x1b[2J", "display name: character U+001B (ESCAPE) at position 4"),
    ("evil\u202egnp.exe", "display name: character U+202E (RIGHT-TO-LEFT OVERRIDE)"),
    ("two\nlines", "U+000A (LINE FEED)"),
    ("d" * (refs.MAX_DISPLAY_NAME_LEN + 1), "display name is 201 characters long"),
])
def test_bad_display_names(value: str, message: str) -> None:
    with pytest.raises(errors.InvalidReference) as exc_info:
        refs.normalise_display_name(value)
    assert message in exc_info.value.message


def test_lookup_forms() -> None:
    assert refs.lookup_forms(" Zoë ") == ["Zoë", " Zoë ", "Zoe\u0308"]
    assert refs.lookup_forms("Zoe\u0308") == ["Zoë", "Zoe\u0308"]  # finds either storage
    assert refs.lookup_forms("GB/2026/000123") == ["GB/2026/000123"]
    # A reference now refused can still be looked up (to show or erase an old record).
    assert refs.lookup_forms("bad\x1bref") == ["bad\x1bref"]
    assert refs.lookup_forms("=1") == ["=1"]
    assert refs.lookup_forms("  ") == []


@pytest.mark.parametrize(("value", "shown"), [
    ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
    ("abc\u202edef", "abc\\u202edef"),
    ("a\x00b\r\n", "a\\x00b\\x0d\\x0a"),
    ("\ufeffx\u200b", "\\ufeffx\\u200b"),
    ("\ud800\udcff", "\\ud800\\udcff"),
    ("\U000f0000", "\\U000f0000"),
    ("a\u2028b", "a\\u2028b"),
    ("Zoë 李小龙 😀 O'Brien \\ / tab-less", "Zoë 李小龙 😀 O'Brien \\ / tab-less"),
    ("", ""),
])
def test_safe_text(value: str, shown: str) -> None:
    assert refs.safe_text(value) == shown
    refs.safe_text(value).encode("utf-8")  # always printable, even lone surrogates


@pytest.mark.parametrize(("value", "cell"), [
    ("=1+1", "'=1+1"), ("+44 20", "'+44 20"), ("-3", "'-3"), ("@SUM(A1)", "'@SUM(A1)"),
    ("\t=1", "'\t=1"), ("\r=1", "'\r=1"), ("\uff1d1", "'\uff1d1"),
    ("a=b", "a=b"), ("Alice", "Alice"), ("", ""), (" =1", " =1"),
])
def test_csv_safe(value: str, cell: str) -> None:
    assert refs.csv_safe(value) == cell


def attempt_ref(value: str) -> str | errors.InvalidReference:
    try:
        return refs.normalise_ref(value)
    except errors.InvalidReference as exc:
        return exc


@settings(deadline=None, derandomize=True, max_examples=500)
@given(TEXT)
def test_normalise_ref_property(value: str) -> None:
    ref = attempt_ref(value)
    forms = refs.lookup_forms(value)  # never raises
    if isinstance(ref, errors.InvalidReference):
        assert ref.code == "subject_ref_invalid"
        assert not categories(ref.message) & FORBIDDEN
        assert forms == [] or value.strip() in forms
        return
    assert forms[0] == ref
    assert refs.normalise_ref(ref) == ref  # idempotent
    assert not categories(ref) & FORBIDDEN
    assert 1 <= len(ref) <= refs.MAX_REF_LEN
    assert ref[0] not in "=+-@"
    assert ref == ref.strip()
    assert unicodedata.is_normalized("NFC", ref)
    assert refs.normalise_ref(f"  {ref}\u00a0") == ref
    assert refs.normalise_display_name(ref) == ref  # a valid ref is a valid display name
    assert refs.safe_text(ref) == ref  # nothing in it needs escaping


@settings(deadline=None, derandomize=True, max_examples=500)
@given(TEXT)
def test_normalise_display_name_property(value: str) -> None:
    try:
        name = refs.normalise_display_name(value)
    except errors.InvalidReference:
        return
    if name is None:
        assert not value.strip()
        return
    assert refs.normalise_display_name(name) == name
    assert not categories(name) & FORBIDDEN
    assert 1 <= len(name) <= refs.MAX_DISPLAY_NAME_LEN


@settings(deadline=None, derandomize=True, max_examples=500)
@given(TEXT)
def test_safe_text_property(value: str) -> None:
    shown = refs.safe_text(value)
    assert not categories(shown) & {"Cc", "Cf", "Cs", "Co", "Cn"}
    shown.encode("utf-8")
    if not categories(value) & (FORBIDDEN | {"Zl", "Zp"}):
        assert shown == value  # everything else is left as it is
