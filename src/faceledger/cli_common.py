"""What every ``faceledger`` command shares: the context, output and the error table."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from faceledger import errors
from faceledger.config import Settings
from faceledger.error_table import mapping_for
from faceledger.services.container import Services, build_services

F = TypeVar("F", bound=Callable[..., Any])
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


class Ctx:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def services(self, create: bool = False) -> Services:
        return build_services(self.settings, create=create)


def emit(data: object, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=None) if as_json else text)


def handles_errors(fn: F) -> F:
    """Turn domain errors into a one-line message (or JSON) and the table's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            return fn(*args, **kwargs)
        except errors.FaceledgerError as exc:
            row = mapping_for(exc)
            if as_json:
                click.echo(json.dumps({"error": {"code": exc.code, "message": exc.message}}))
            else:
                click.echo(f"error [{exc.code}]: {exc.message}", err=True)
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
