"""The one definition of what a subject reference and a display name may contain.

Every way in uses these functions: folder names, CSV and JSONL manifests, lookups such as
``erase --subject REF`` and ``subjects show REF``, and the API. See ``docs/references.md``.

A **subject reference** is an identifier chosen by the supplier of the images (a custody
number, a case file, an LFW name). :func:`normalise_ref` returns its canonical form:

* Unicode NFC, surrounding whitespace stripped, then 1..:data:`MAX_REF_LEN` characters;
* no control characters (``Cc``: NUL, TAB, LF, CR, ESC, DEL, C1 controls), no format
  characters (``Cf``: bidi overrides/embeddings/isolates, zero-width characters, BOM), no
  surrogates (``Cs``), private-use (``Co``) or unassigned (``Cn``) code points, no line or
  paragraph separators (``Zl``, ``Zp``);
* not starting with a spreadsheet-formula character (``=``, ``+``, ``-``, ``@``).

A **display name** is free text shown to people: :func:`normalise_display_name` applies the
same character rules and length cap, but allows a leading formula character (output to a
spreadsheet goes through :func:`csv_safe`). Empty means "no display name".

Text printed to a terminal goes through :func:`safe_text`, text written to a CSV cell
through :func:`csv_safe`. Lookups by reference match the forms :func:`lookup_forms` gives.
"""

from __future__ import annotations

import contextlib
import unicodedata

from faceledger import errors

MAX_REF_LEN = 200
MAX_DISPLAY_NAME_LEN = 200

#: Unicode general categories refused in references and display names, escaped on output.
FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
#: A leading one of these makes a spreadsheet read the cell as a formula.
FORMULA_PREFIXES = frozenset("=+-@")
# csv_safe also quotes TAB and CR (OWASP) and the full-width forms of the four.
_CSV_DANGEROUS_FIRST = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20")

_KINDS = {
    "Cc": "control character",
    "Cf": "invisible format character (bidi control, zero-width character or BOM)",
    "Cs": "surrogate code point (not a character)",
    "Co": "private-use code point",
    "Cn": "unassigned code point",
    "Zl": "line separator",
    "Zp": "paragraph separator",
}

# Control characters have no Unicode name; these are their formal aliases.
_CONTROL_NAMES = {
    0x00: "NULL", 0x01: "START OF HEADING", 0x02: "START OF TEXT", 0x03: "END OF TEXT",
    0x04: "END OF TRANSMISSION", 0x05: "ENQUIRY", 0x06: "ACKNOWLEDGE", 0x07: "BELL",
    0x08: "BACKSPACE", 0x09: "CHARACTER TABULATION", 0x0A: "LINE FEED",
    0x0B: "LINE TABULATION", 0x0C: "FORM FEED", 0x0D: "CARRIAGE RETURN", 0x0E: "SHIFT OUT",
    0x0F: "SHIFT IN", 0x10: "DATA LINK ESCAPE", 0x11: "DEVICE CONTROL ONE",
    0x12: "DEVICE CONTROL TWO", 0x13: "DEVICE CONTROL THREE", 0x14: "DEVICE CONTROL FOUR",
    0x15: "NEGATIVE ACKNOWLEDGE", 0x16: "SYNCHRONOUS IDLE",
    0x17: "END OF TRANSMISSION BLOCK", 0x18: "CANCEL", 0x19: "END OF MEDIUM",
    0x1A: "SUBSTITUTE", 0x1B: "ESCAPE", 0x1C: "INFORMATION SEPARATOR FOUR",
    0x1D: "INFORMATION SEPARATOR THREE", 0x1E: "INFORMATION SEPARATOR TWO",
    0x1F: "INFORMATION SEPARATOR ONE", 0x7F: "DELETE", 0x85: "NEXT LINE",
    0x9B: "CONTROL SEQUENCE INTRODUCER", 0x9D: "OPERATING SYSTEM COMMAND",
}


def is_forbidden_char(ch: str) -> bool:
    """True for a character refused in references and escaped by :func:`safe_text`."""
    return unicodedata.category(ch) in FORBIDDEN_CATEGORIES


def char_description(ch: str) -> str:
    """``U+202E (RIGHT-TO-LEFT OVERRIDE)``: the code point and its name, never the raw char.

    Code points without a name (surrogates, private use, unassigned) are given bare.
    """
    cp = ord(ch)
    name = _CONTROL_NAMES.get(cp) or unicodedata.name(ch, "")
    return f"U+{cp:04X} ({name})" if name else f"U+{cp:04X}"


def _check_chars(what: str, value: str) -> None:
    bad = [(i, ch) for i, ch in enumerate(value, start=1) if is_forbidden_char(ch)]
    if not bad:
        return
    pos, ch = bad[0]
    more = f" (and {len(bad) - 1} more such characters)" if len(bad) > 1 else ""
    raise errors.InvalidReference(
        f"{what}: character {char_description(ch)} at position {pos} is not allowed: "
        f"{_KINDS[unicodedata.category(ch)]}{more}")


def _normalise(what: str, value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise errors.InvalidReference(f"{what} must be text, not {type(value).__name__}")
    # Characters are checked as given (positions are those the user typed, 1-based), so a
    # control character is refused even at either end, where stripping would hide it.
    _check_chars(what, value)
    text = unicodedata.normalize("NFC", value.strip()).strip()
    if len(text) > limit:
        raise errors.InvalidReference(
            f"{what} is {len(text)} characters long; the limit is {limit}")
    _check_chars(what, text)  # NFC never adds such characters; kept as a guard
    return text


def normalise_ref(value: str) -> str:
    """The canonical form of a subject reference, or :class:`errors.InvalidReference`."""
    text = _normalise("subject reference", value, MAX_REF_LEN)
    if not text:
        raise errors.InvalidReference("subject reference is empty")
    if text[0] in FORMULA_PREFIXES:
        raise errors.InvalidReference(
            f"subject reference may not start with {text[0]!r}: a spreadsheet would read "
            "it as a formula (=, +, - and @ are refused as the first character)")
    return text


def normalise_display_name(value: str | None) -> str | None:
    """The canonical form of a display name (``None`` when empty), or InvalidReference.

    Same character rules and length cap as a reference; a leading ``=``/``+``/``-``/``@`` is
    allowed (free text; CSV output is protected by :func:`csv_safe`).
    """
    if value is None:
        return None
    text = _normalise("display name", value, MAX_DISPLAY_NAME_LEN)
    return text or None


def lookup_forms(value: str) -> list[str]:
    """The stored forms a reference typed for a lookup (``erase --subject``, ``subjects
    show``, the API) may match: the canonical form first (when ``value`` is valid), then the
    value as given, stripped, and its NFC and NFD forms, without repeats.

    Never raises: a lookup must still reach a record stored before these rules (a name in
    NFD from a macOS folder, surrounding spaces, even a character now refused), so that it
    can be shown and erased. A blank value matches nothing (``[]``).
    """
    stripped = value.strip()
    if not stripped:
        return []
    forms = [value, stripped, unicodedata.normalize("NFC", stripped),
             unicodedata.normalize("NFD", stripped)]
    with contextlib.suppress(errors.InvalidReference):
        forms.insert(0, normalise_ref(value))
    return list(dict.fromkeys(forms))


def _escape(ch: str) -> str:
    cp = ord(ch)
    if cp <= 0xFF:
        return f"\\x{cp:02x}"
    if cp <= 0xFFFF:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def safe_text(value: str) -> str:
    """``value`` with every control, format, surrogate, private-use, unassigned character
    and line/paragraph separator replaced by a visible escape (``\\x1b``, ``\\u202e``).

    For printing any stored or user-supplied text: no raw ESC, CR or bidi override reaches a
    terminal, and the result always encodes as UTF-8. Everything else is left as it is.
    """
    if not any(is_forbidden_char(ch) for ch in value):
        return value
    return "".join(_escape(ch) if is_forbidden_char(ch) else ch for ch in value)


def csv_safe(value: str) -> str:
    """A CSV cell that a spreadsheet will not run as a formula: a leading ``=``, ``+``,
    ``-``, ``@`` (or full-width form), TAB or CR gets a ``'`` in front (OWASP advice)."""
    if value and value[0] in _CSV_DANGEROUS_FIRST:
        return "'" + value
    return value
