"""A one-line progress bar for long CLI work (generating, converting, benchmarking).

It draws only when its stream is a terminal and the user did not ask for
``--quiet``: a pipe or a log file gets nothing, so output stays clean for
scripts. Redraws are throttled (at most ten a second) so the bar costs nothing
next to the work it reports on; callers advance it once per batch, never per
packet.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

_WIDTH = 30
_INTERVAL_S = 0.1


class Progress:
    """``with Progress(total, label="gen") as bar: bar.advance(n)``; draws on a TTY only."""

    def __init__(
        self,
        total: int,
        *,
        label: str = "",
        quiet: bool = False,
        stream: TextIO | None = None,
        unit: str = "",
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total = max(0, total)
        self.label = label
        self.unit = unit  # "" counts things; "B" counts bytes and shows MiB
        self.done = 0
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = not quiet and bool(isatty and isatty())
        self._last_draw = 0.0

    def advance(self, count: int) -> None:
        self.done += count
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw >= _INTERVAL_S or self.done >= self.total:
            self._last_draw = now
            self._draw()

    def _draw(self) -> None:
        share = min(1.0, self.done / self.total) if self.total else 1.0
        filled = int(share * _WIDTH)
        bar = "#" * filled + "." * (_WIDTH - filled)
        if self.unit == "B":
            amount = f"{self.done / 2**20:.0f}/{self.total / 2**20:.0f} MiB"
        else:
            amount = f"{self.done}/{self.total}"
        self.stream.write(f"\r{self.label} [{bar}] {share:4.0%} {amount}")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.enabled:
            if exc_type is None:
                self._draw()
            self.stream.write("\n")
            self.stream.flush()
