"""Command-line interface: parses arguments, loads config, calls one function per command.

Errors that a user can fix (bad input file, wrong config key, missing pixel size) become one
line on stderr and exit status 1; bad usage exits 2 (click's convention); ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from nptrack import __version__

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """An error whose message is all the user needs (no traceback)."""


def _expected_errors() -> tuple[type[BaseException], ...]:
    from nptrack.config import ConfigError
    from nptrack.io.errors import ReadError

    return (UserError, ConfigError, ReadError, FileNotFoundError, ValueError)


def friendly(func: F) -> F:
    """Turn expected exceptions into one clear line on stderr and exit status 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        debug = bool(ctx.find_root().params.get("debug"))
        try:
            return func(*args, **kwargs)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except _expected_errors() as exc:
            if debug:
                raise
            click.echo(f"nptrack {ctx.info_name}: error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo(f"nptrack {ctx.info_name}: interrupted", err=True)
            ctx.exit(130)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nptrack")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def main(debug: bool) -> None:
    """nptrack: live analysis of in situ (E)TEM / STEM series of supported nanoparticles."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file per line.")
@friendly
def info(files: tuple[Path, ...], as_json: bool) -> None:
    """What nptrack sees in each FILE: kind, frames, shape, dtype, pixel size (nm), complete.

    Exit status 1 if any file could not be read as an image (refused, truncated, unknown).
    """
    from nptrack.io.read import probe

    failed = 0
    for path in files:
        result = probe(path)
        if as_json:
            click.echo(json.dumps(result.to_dict()))
        else:
            click.echo(result.describe())
        if result.kind == "refused":
            failed += 1
            if not as_json:
                click.echo(f"nptrack info: error: {path}: {result.reason}", err=True)
    if failed:
        sys.exit(1)


# --- simulate commands (nptrack.simulate) ---------------------------------------------------
# (end simulate commands)

# --- register command (nptrack.register) -----------------------------------------------------
# (end register command)

# --- analyze command (nptrack.measure) -------------------------------------------------------
# (end analyze command)

# --- train / export-model commands (nptrack.segment) -----------------------------------------
# (end train / export-model commands)

# --- evaluate command (nptrack.evaluate, nptrack.track) --------------------------------------
# (end evaluate command)


if __name__ == "__main__":  # pragma: no cover
    main()
