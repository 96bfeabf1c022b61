"""The ``reflectune`` command line: a thin layer over the Python API.

Each command lives in its own module exposing ``register(app)``; this file only assembles them and
turns every ``ReflectuneError`` into a one-line message and an exit code, never a traceback.
Nothing imports this package.
"""

from __future__ import annotations

import importlib
import sys

import typer

from reflectune.errors import ReflectuneError

COMMAND_MODULES = ("recycle", "score", "select", "train", "generate", "judge", "run", "report", "models",
                   "demo")

app = typer.Typer(
    name="reflectune",
    help="Recycle instruction-tuning data: reflect with an oracle, select with a student, "
    "train, and judge.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=lambda v: _version(v),
                                 help="Print the version and exit."),
) -> None:
    """Recycle instruction-tuning data."""


def _version(value: bool) -> None:
    if value:
        from reflectune import __version__

        typer.echo(f"reflectune {__version__}")
        raise typer.Exit()


for _name in COMMAND_MODULES:
    importlib.import_module(f"reflectune.cli.{_name}").register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and ``python -m reflectune``."""
    try:
        app(args=argv, prog_name="reflectune")  # usage errors exit through SystemExit
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
