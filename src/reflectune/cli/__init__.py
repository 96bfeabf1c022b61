"""The ``reflectune`` command line: a thin layer over the Python API.

Each command lives in its own module exposing ``register(app)``; this file only assembles them and
turns every ``ReflectuneError`` into a one-line message and an exit code, never a traceback.
Nothing imports this package.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer

from reflectune.errors import ReflectuneError

COMMAND_MODULES = ("recycle", "score", "select", "decontaminate", "train", "generate", "judge", "run",
                   "report", "models", "demo")

app = typer.Typer(
    name="reflectune",
    help="Recycle instruction-tuning data: reflect with an oracle, select with a student, "
    "train, and judge.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", is_eager=True, callback=lambda v: _version(v),
                                 help="Print the version and exit."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, show_default=False,
                                help="Log to stderr: -v what happens (retries, stops, decisions), -vv every "
                                "call too. Every run folder keeps the full log in log.txt either way."),
) -> None:
    """Recycle instruction-tuning data."""
    from reflectune import logs

    logs.console(verbose)


def _version(value: bool) -> None:
    if value:
        from reflectune import __version__

        typer.echo(f"reflectune {__version__}")
        raise typer.Exit()


for _name in COMMAND_MODULES:
    importlib.import_module(f"reflectune.cli.{_name}").register(app)


def _flags_as_flags(command: Any) -> Any:
    """Show an on/off option as a flag in the help: ``--dry-run``, not ``--dry-run <bool>``.

    (Typer's commands are its own vendored click's, so this goes by attributes, not by class.)"""
    for param in command.params:
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.metavar = ""
    help_option = command.get_help_option

    def flag_help(ctx: Any) -> Any:
        option = help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = flag_help
    for sub in getattr(command, "commands", {}).values():
        _flags_as_flags(sub)
    return command


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and ``python -m reflectune``."""
    try:
        # usage errors exit through SystemExit
        _flags_as_flags(typer.main.get_command(app))(args=argv, prog_name="reflectune")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except ReflectuneError as exc:
        typer.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        typer.echo("interrupted: rerun the same command to resume", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
