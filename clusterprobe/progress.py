"""Progress of long work, readable on a terminal, in a notebook and in a log file.

On a terminal or in Jupyter a tqdm bar redraws itself in place. Written to a log (``nohup
clusterprobe train ... > train.log 2>&1``, a batch job's output file) that bar becomes one
endless line of carriage returns that neither ``tail -f`` nor a pager shows usefully; there
:func:`progress_bar` prints a plain line instead, at most one every ``every`` seconds and one at
the end, e.g.::

    [extract] 12.8k/50.0k img (26%), 1m10s elapsed, about 3m20s left, 183 img/s

:func:`is_terminal` and :func:`format_duration` are the two rules every progress display of
the package (the report's included) shares.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, TextIO

__all__ = ["LogProgress", "format_duration", "is_terminal", "progress_bar"]


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: stderr) is an interactive terminal; False for a closed or
    replaced stream."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (where a bar is drawn as a widget, not with ``\\r``)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ipython = shell.get_ipython()
    except AttributeError:
        return False
    return ipython is not None and "IPKernelApp" in getattr(ipython, "config", {})


def format_duration(seconds: float) -> str:
    """``42s``, ``1m20s``, ``9m``, ``1h05m``: short enough for a log line."""
    seconds = int(round(max(seconds, 0.0)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 10:
        return f"{minutes}m{seconds:02d}s" if seconds else f"{minutes}m"
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _count(value: float) -> str:
    """``950``, ``12.8k``, ``1.28M``: counts as tqdm's ``unit_scale`` writes them."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            scaled = value / factor
            return f"{scaled:.2f}{suffix}" if scaled < 10 else f"{scaled:.1f}{suffix}"
    return f"{value:.0f}"


class LogProgress:
    """A progress display for logs: the part of tqdm's interface the package uses, as lines.

    A line at most every ``every`` seconds (checked on :meth:`update`) and, with ``final_line``,
    one when the work is done (on :meth:`close`, if anything was counted since the last line;
    leave it off where the caller prints its own summary, as the trainer does per epoch): the count against
    ``total``, the elapsed time, an estimate of what is left (the mean rate so far) and the rate.
    :meth:`set_postfix` values (a loss, a learning rate) are appended as ``key=value``.
    """

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", every: float = 30.0, stream: TextIO | None = None, unit_scale: bool = False,
                 final_line: bool = True):
        self.iterable = iterable
        self.final_line = final_line
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.unit_scale = unit_scale
        self.n = 0
        self._stream = stream
        self._postfix: dict[str, Any] = {}
        self._started = self._last_line = time.monotonic()
        self._printed_at = 0  # self.n when the last line was printed
        self._closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()  # as tqdm: the final line when the iterable is exhausted

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last_line >= self.every:
            self._line()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self._postfix = {**(ordered_dict or {}), **kwargs}

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def close(self) -> None:
        if self.final_line and not self._closed and self.n > self._printed_at:
            self._line()
        self._closed = True

    def _line(self) -> None:
        elapsed = time.monotonic() - self._started
        number = _count if self.unit_scale else (lambda v: f"{v:,.0f}")
        text = f"{number(self.n)}"
        if self.total:
            text += f"/{number(self.total)} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {format_duration(elapsed)} elapsed"
        if self.total and 0 < self.n < self.total:
            text += f", about {format_duration(elapsed / self.n * (self.total - self.n))} left"
        if elapsed > 0 and self.n:
            rate = self.n / elapsed
            text += f", {_count(rate) if rate >= 1000 else f'{rate:.3g}'} {self.unit}/s"
        if self._postfix:
            text += ", " + ", ".join(f"{key}={value}" for key, value in self._postfix.items())
        stream = self._stream or sys.stderr
        print(f"[{self.desc}] {text}" if self.desc else text, file=stream, flush=True)
        self._last_line, self._printed_at = time.monotonic(), self.n


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 enabled: bool = True, every: float = 30.0, stream: TextIO | None = None, unit_scale: bool = False,
                 leave: bool = True, final_line: bool = True):
    """A tqdm bar on a terminal or in a notebook, :class:`LogProgress` lines otherwise.

    Args:
        iterable: what to iterate over (optional, as for tqdm).
        total: the expected count (default: ``len(iterable)`` where it has one).
        desc: what is counted, shown before the count (``"extract"``, ``"epoch 3/100"``).
        unit: the counted thing (``"img"``, ``"step"``).
        enabled: False gives a display that prints nothing (tqdm's ``disable``).
        every: seconds between two log lines (the bar redraws as tqdm does).
        stream: where to write (default: stderr).
        unit_scale: counts as ``12.8k`` rather than ``12,800``.
        leave: keep the finished bar on a terminal (log lines always stay).
        final_line: in a log, print a line when the work is done (False where the caller
            prints its own summary then).

    Returns:
        An object with tqdm's ``update``, ``set_postfix``, ``set_description``, ``close``,
        iteration and ``with`` support.
    """
    if enabled and not in_notebook() and not is_terminal(stream):
        return LogProgress(iterable, total=total, desc=desc, unit=unit, every=every, stream=stream,
                           unit_scale=unit_scale, final_line=final_line)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, file=stream,
                unit_scale=unit_scale, leave=leave, dynamic_ncols=True)
