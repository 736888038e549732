"""Shared pieces of the command-line layer: clean error reporting and option parsing."""

from __future__ import annotations

import errno
import functools
import sys
from typing import Callable, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from clusterprobe.errors import ClusterprobeError

console = Console(stderr=True)
F = TypeVar("F", bound=Callable)


def friendly_errors(function: F) -> F:
    """Print a :class:`ClusterprobeError` as one paragraph (no traceback) and exit with code 1.

    Messages are printed as text, never as rich markup: a path or value in square brackets
    ("runs/[baseline]", "[min, max]") would otherwise be dropped as a style tag, or end in a
    MarkupError traceback ("[/x]")."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except ClusterprobeError as error:
            console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=1) from None
        except OSError as error:
            message = _os_error_message(error)
            if message is None:
                raise
            console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=1) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: finished chunks/epochs are kept; run the same command again to resume.")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


#: File-system errors a user fixes by choosing another place or freeing space (not our bugs).
_OS_PROBLEMS = {
    errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
}


def _os_error_message(error: OSError) -> str | None:
    """One line for a permission, read-only or full-disk error that no clearer check caught."""
    problem = _OS_PROBLEMS.get(error.errno)
    if problem is None:
        return None
    where = f" at {error.filename}" if error.filename else ""
    return (f"{problem}{where}. Check that location's permissions and free space, or write the "
            "output somewhere else.")


def split_list(value: str | None) -> list[str] | None:
    """Parse a comma-separated option ("H,P0,Z") into a list; None stays None."""
    if value is None:
        return None
    items = [item.strip() for item in value.split(",") if item.strip()]
    return items or None


def int_list(value: str | None, flag: str) -> list[int] | None:
    """Parse a comma-separated option of whole numbers ("0,10,100"); None stays None.

    Raises:
        typer.BadParameter: an item is not a whole number (the flag and the text are named).
    """
    items = split_list(value)
    if items is None:
        return None
    try:
        return [int(item) for item in items]
    except ValueError:
        raise typer.BadParameter(f"{flag} takes whole numbers separated by commas, e.g. 0,10,100; got {value!r}.") from None
