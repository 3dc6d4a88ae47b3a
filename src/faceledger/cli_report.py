"""``faceledger report``: the transparency report (the group itself, with a period) and
``faceledger report dpia``: the DPIA input sheet. The same services as ``GET /v1/report``
and ``GET /v1/report/dpia``. Both read only: they work on a read-only store too.

``report`` is a group that also runs itself (``invoke_without_command``), so the issue's
``faceledger report --from --to --format md|json`` stays the transparency report and the
sheet is its one subcommand; options given before ``dpia`` are refused (usage error), not
silently dropped."""

from __future__ import annotations

from pathlib import Path

import click

from faceledger.cli_common import Ctx, handles_errors, json_dumps, json_option, pass_ctx

_format = click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md",
                       show_default=True, help="Markdown (tables) or JSON.")
_out = click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
                    help="Write to this file instead of printing.")


def _deliver(text: str, out: Path | None) -> None:
    if out is None:
        click.echo(text)
        return
    out.write_text(text + "\n", encoding="utf-8")
    click.echo(f"written to {out}", err=True)


@click.group("report", invoke_without_command=True)
@click.option("--from", "since", default=None, metavar="DATE",
              help="Start of the period: YYYY-MM-DD or an ISO 8601 time (UTC if no offset).")
@click.option("--to", "until", default=None, metavar="DATE",
              help="End of the period (a date includes that whole day).")
@_format
@_out
@json_option
@click.pass_context
def report_group(ctx: click.Context, since: str | None, until: str | None, fmt: str,
                 out: Path | None, as_json: bool) -> None:
    """The transparency report: sources, gallery, searches by purpose and outcome,
    reviews, erasures, retention, subject requests, the model and thresholds in force.
    Aggregate counts only (no names, references, cases or contacts).

    `faceledger report dpia` gives the DPIA input sheet instead."""
    if ctx.invoked_subcommand is not None:
        if since or until or out or as_json or fmt != "md":
            raise click.UsageError(f"give the options after `report {ctx.invoked_subcommand}`"
                                   " (--from and --to are the transparency report's)")
        return
    c = ctx.find_object(Ctx)
    assert c is not None
    _transparency(c, since, until, out, as_json=as_json or fmt == "json")


@handles_errors
def _transparency(c: Ctx, since: str | None, until: str | None, out: Path | None, *,
                  as_json: bool) -> None:
    from faceledger.services.report import parse_period, transparency_report

    start, stop = parse_period(since, until)
    r = transparency_report(c.services(), since=start, until=stop)
    if as_json:
        _deliver(json_dumps(r), out)
    else:
        from faceledger.services.report_md import transparency_markdown

        _deliver(transparency_markdown(r), out)


@report_group.command(
    "dpia", short_help="The DPIA input sheet, from the configuration and the records.")
@_format
@_out
@json_option
@pass_ctx
def report_dpia(c: Ctx, fmt: str, out: Path | None, as_json: bool) -> None:
    """The DPIA input sheet (GDPR Art. 35): processing, data categories, purposes and
    lawful bases, necessity prompts, retention, roles, risks with this system's
    mitigations and the operator's duties. From the configuration and the records."""
    _dpia(c, out, as_json=as_json or fmt == "json")


@handles_errors
def _dpia(c: Ctx, out: Path | None, *, as_json: bool) -> None:
    from faceledger.services.report import dpia_sheet

    d = dpia_sheet(c.services())
    if as_json:
        _deliver(json_dumps(d), out)
    else:
        from faceledger.services.report_md import dpia_markdown

        _deliver(dpia_markdown(d), out)
