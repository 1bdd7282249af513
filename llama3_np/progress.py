"""A one-line progress bar on stderr, for loading checkpoints and scoring perplexity.

Drawn only when the stream is a terminal (or when forced), so logs and pipes stay
clean; redrawn at most every `min_interval` seconds so it costs nothing in a loop.

    with ProgressBar(len(names), "loading") as bar:
        for name in names:
            ...
            bar.advance()
"""

import sys
import time


class ProgressBar:
    def __init__(self, total: int, label: str = "", stream=None, force: bool = False,
                 width: int = 30, min_interval: float = 0.1):
        self.total = max(int(total), 0)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = force or _is_terminal(self.stream)
        self.width = width
        self.min_interval = min_interval
        self.done = 0
        self.started = time.perf_counter()
        self._last_draw = None  # time of the last draw; None: nothing drawn yet

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def update(self, done: int, total: int = None) -> None:
        """Set the count (and the total, when it was not known up front)."""
        if total is not None:
            self.total = max(int(total), 0)
        self.done = min(int(done), self.total) if self.total else int(done)
        now = time.perf_counter()
        finished = self.total and self.done >= self.total
        if self._last_draw is None or finished or now - self._last_draw >= self.min_interval:
            self._draw(now)

    def __call__(self, done: int, total: int) -> None:
        """Usable directly as a callback(done, total), e.g. load(..., progress=bar)."""
        self.update(done, total)

    def close(self) -> None:
        """Finish the line so whatever is printed next starts on a fresh one."""
        if self.enabled and self._last_draw is not None:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()
        self._last_draw = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def line(self, now: float = None) -> str:
        """`label [#######.......] 12/40  30%  3.1s`."""
        elapsed = (now if now is not None else time.perf_counter()) - self.started
        fraction = self.done / self.total if self.total else 0.0
        filled = int(round(fraction * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        label = f"{self.label} " if self.label else ""
        return (f"{label}[{bar}] {self.done}/{self.total} {100 * fraction:3.0f}% "
                f"{elapsed:5.1f}s")

    def _draw(self, now: float) -> None:
        self._last_draw = now
        if self.enabled:
            # \r returns to the line's start; \x1b[K clears what a longer line left behind.
            self.stream.write("\r" + self.line(now) + "\x1b[K")
            self.stream.flush()


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
