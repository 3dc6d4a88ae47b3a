"""What every ``faceledger`` command shares: the context, output and the error table."""

from __future__ import annotations

import functools
import json
import logging
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from faceledger import errors
from faceledger.error_table import mapping_for
from faceledger.refs import safe_text

if TYPE_CHECKING:  # the heavy modules load when a command runs, not for --help
    from faceledger.client import Client
    from faceledger.config import Settings
    from faceledger.services.container import Services

F = TypeVar("F", bound=Callable[..., Any])
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


class Ctx:
    """What a command gets: the settings (read on first use, so `--help` and usage errors
    need no configuration and load nothing heavy) and a way to open the store."""

    def __init__(self, home: Path | None = None) -> None:
        self._home = home
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from faceledger.config import load_settings

            self._settings = load_settings(home=self._home)
        return self._settings

    def remote(self) -> Client | None:
        """A client of the server at FACELEDGER_URL, or None to work on the store here."""
        url = self.settings.url
        if not url:
            return None
        key = self.settings.api_key
        if key is None or not key.get_secret_value():
            raise errors.ConfigError("FACELEDGER_URL is set: set FACELEDGER_API_KEY too")
        from faceledger.client import Client

        return Client(url, key.get_secret_value())

    def services(self, create: bool = False) -> Services:
        from faceledger.services.container import build_services

        svc = build_services(self.settings, create=create)
        if not create and not svc.read_only:
            # An erasure a crash interrupted is finished by the next command on the store.
            from faceledger.services.erasure import resume_erasures

            resume_erasures(svc)
        return svc


_INVISIBLE = frozenset({"Cf", "Co", "Cs", "Cn", "Zl", "Zp"})


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    v = code - 0x10000
    return f"\\u{0xD800 + (v >> 10):04x}\\u{0xDC00 + (v & 0x3FF):04x}"


def json_dumps(data: object) -> str:
    """JSON with every non-ASCII letter as itself, but format, private-use, unassigned
    and line-separator characters (bidi overrides, zero-width...) as \\u escapes, so a
    stored reference cannot reorder or hide text on a terminal. Still valid JSON: those
    characters can only occur inside strings (control characters json escapes itself)."""
    text = json.dumps(data, ensure_ascii=False, indent=None)
    return "".join(_json_escape(ch) if ord(ch) > 0x7E
                   and unicodedata.category(ch) in _INVISIBLE else ch for ch in text)


def pretty(data: object) -> str:
    """Indented JSON for a person to read, each line escaped (``refs.safe_text``)."""
    from faceledger.refs import safe_text

    shown = json.dumps(data, indent=2, ensure_ascii=False)
    return "\n".join(safe_text(line) for line in shown.split("\n"))


def emit(data: object, as_json: bool, text: str) -> None:
    click.echo(json_dumps(data) if as_json else text)


def handles_errors(fn: F) -> F:
    """Turn domain errors into a one-line message (or JSON) and the table's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                from faceledger.store.db import translate as translate_db_error

                typed = translate_db_error(exc)
                if typed is None:
                    raise
                raise typed from exc
        except errors.FaceledgerError as exc:
            row = mapping_for(exc)
            if as_json:
                click.echo(json_dumps({"error": {"code": exc.code, "message": exc.message}}))
            else:
                click.echo(f"error [{exc.code}]: {safe_text(exc.message)}", err=True)
            sys.exit(row.exit_code)
        except Exception as exc:  # an unexpected fault: one line, details only with -v
            logging.getLogger("faceledger").debug("unexpected error", exc_info=True)
            message = f"unexpected {type(exc).__name__} (run with -v for details)"
            if as_json:
                click.echo(json.dumps({"error": {"code": "internal", "message": message}}))
            else:
                click.echo(f"error [internal]: {message}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


pass_ctx = click.make_pass_decorator(Ctx)
