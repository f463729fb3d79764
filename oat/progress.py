"""Progress with ETA: a live bar on a terminal, plain log lines otherwise (logs, CI, clusters)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    """Reports ``done/total`` steps of a named task with elapsed time and ETA.

    On a terminal it redraws one line per update; elsewhere it prints only when ``log`` is
    called (one line per epoch), so log files stay readable.
    """

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None, enabled: bool = True,
                 start_done: int = 0):
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.live = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self.start_done = start_done
        self.done = start_done
        self._last_draw = 0.0

    def eta(self) -> float:
        elapsed = time.perf_counter() - self.start
        progressed = self.done - self.start_done
        if progressed <= 0:
            return float("nan")
        return elapsed / progressed * (self.total - self.done)

    def update(self, done: int, detail: str = "") -> None:
        self.done = done
        if not self.live:
            return
        now = time.perf_counter()
        if now - self._last_draw < 0.1 and done < self.total:
            return
        self._last_draw = now
        width = 24
        filled = int(width * done / max(self.total, 1))
        eta = self.eta()
        eta_text = "--:--" if eta != eta else format_seconds(eta)
        line = (f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                f"{format_seconds(now - self.start)}<{eta_text} {detail}")
        self.stream.write(line[:200].ljust(80))
        self.stream.flush()

    def log(self, message: str) -> None:
        """A line that stays (an epoch summary)."""
        if not self.enabled:
            return
        if self.live:
            self.stream.write("\r" + " " * 100 + "\r")
        self.stream.write(message + "\n")
        self.stream.flush()
