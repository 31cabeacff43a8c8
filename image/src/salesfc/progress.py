"""Progress of the stages that take more than a few seconds, so that no command is silent for minutes.

On a terminal: a tqdm bar on stderr (steps counted, or only the time spent for a stage that is one long call). In a
log (a pod, CI, a pipe): a line when the stage starts, one every ``LOG_EVERY`` seconds while it runs, and one when
it ends, through logging, so they carry the time stamp and rank of every other line. Stdout stays for results.
While a bar is shown, log lines to the console go above it (through tqdm), once each, instead of breaking it.

    with progress.stage("tree peer", total=3, unit="fit") as bar:
        for params in grid:
            ...
            bar.update()

    with progress.stage("reading the held-out weeks through Feast"):   # one long call: time only
        frame = feature_store.historical_features(store)
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from typing import Callable, Iterator, TextIO

log = logging.getLogger("salesfc.progress")

LOG_EVERY = 30.0       # seconds between lines in a log
REFRESH_EVERY = 1.0    # seconds between redraws of a bar whose count does not move (one long call)


class Progress:
    """One stage's progress: ``update`` counts steps; log lines meanwhile print above a bar, not through it."""

    def __init__(self, what: str, total: int | None = None, unit: str = "step", *, initial: int = 0,
                 stream: TextIO | None = None, terminal: bool | None = None, log_every: float = LOG_EVERY,
                 clock: Callable[[], float] = time.monotonic, enabled: bool = True):
        self.what, self.total, self.unit = what, total, unit
        self.done = initial
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.terminal = enabled and (_is_terminal(self.stream) if terminal is None else terminal)
        self.log_every = log_every
        self.clock = clock
        self.started = clock()
        self.last_line = self.started
        self._lock = threading.Lock()
        self._bar = None
        self._redirect = contextlib.ExitStack()
        if self.terminal:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=total, initial=initial, desc=what, unit=unit, file=self.stream, leave=False,
                             dynamic_ncols=True)
            self._redirect.enter_context(logging_redirect_tqdm())
        elif enabled:
            log.info("%s ...%s", what, f" ({_count(total, unit)})" if total else "")

    def update(self, steps: int = 1) -> None:
        with self._lock:
            self.done += steps
            if self._bar is not None:
                self._bar.update(steps)
            else:
                self._maybe_log()

    def tick(self) -> None:
        """Called now and then by the heartbeat thread: keeps a bar's clock running, logs when a line is due."""
        with self._lock:
            if self._bar is not None:
                self._bar.refresh()
            else:
                self._maybe_log()

    def _maybe_log(self) -> None:
        now = self.clock()
        if not self.enabled or now - self.last_line < self.log_every:
            return
        self.last_line = now
        log.info("%s: %s", self.what, self.status(now))

    def status(self, now: float | None = None) -> str:
        elapsed = (self.clock() if now is None else now) - self.started
        if not self.total:
            return f"{_count(self.done, self.unit)}, {elapsed:.0f} s so far" if self.done else \
                f"still running, {elapsed:.0f} s so far"
        share = self.done / self.total
        left = elapsed / share - elapsed if share > 0 else None
        eta = f", about {left:.0f} s left" if left is not None and self.done < self.total else ""
        return f"{self.done:,} of {_count(self.total, self.unit)} ({share:.0%}), {elapsed:.0f} s so far{eta}"

    def close(self) -> float:
        elapsed = self.clock() - self.started
        if self._bar is not None:
            self._redirect.close()
            self._bar.close()
            self._bar = None
        return elapsed


def _count(number: int, unit: str) -> str:
    return f"{number:,} {unit}{'' if number == 1 else 's'}"


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def stage(what: str, total: int | None = None, unit: str = "step", *, enabled: bool = True,
          done: Callable[[float], str] | None = None, **options) -> Iterator[Progress]:
    """Show ``what``'s progress while the block runs (see the module's docstring); log how long it took.

    A background thread ticks the display, so a block that is one long call still shows its time on a terminal
    and a line every ``LOG_EVERY`` seconds in a log. ``enabled=False`` (ranks other than 0) shows nothing.
    """
    progress = Progress(what, total, unit, **options, enabled=enabled)
    stop = threading.Event()
    beat = None
    if enabled:
        interval = REFRESH_EVERY if progress.terminal else min(REFRESH_EVERY * 5, progress.log_every)

        def heartbeat() -> None:
            while not stop.wait(interval):
                progress.tick()

        beat = threading.Thread(target=heartbeat, name=f"progress: {what}", daemon=True)
        beat.start()
    try:
        yield progress
    finally:
        stop.set()
        if beat is not None:
            beat.join()
        elapsed = progress.close()
    if enabled:
        log.info("%s: done in %.1f s%s", what, elapsed, f" ({done(elapsed)})" if done else "")
