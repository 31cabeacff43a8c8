"""Run a long build with its output in a log file, saying where the log is and streaming a line now and then.

An image build takes minutes (7.5 on the CI machine) and pytest captures what fixtures print: without this the
run looked hung. ``say`` writes past pytest's capture (conftest.py gives it the terminal).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable

EVERY = 30.0  # seconds between progress lines


def last_line(path: Path, limit: int = 160) -> str:
    """The last non-blank line of ``path`` (its last 8 KB read only), shortened to ``limit`` characters."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 8192))
            tail = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    # Progress bars redraw with carriage returns: the latest state is after the last one.
    lines = [line.rsplit("\r", 1)[-1].strip() for line in tail.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    line = lines[-1]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def run_logged(command: list[str], log: Path, *, what: str, say: Callable[[str], None], timeout: float,
               every: float = EVERY, clock: Callable[[], float] = time.monotonic, **popen) -> int:
    """Run ``command`` with stdout and stderr in ``log``; say where the log is, then every ``every`` seconds how long
    it has run and the log's last line. Returns the exit status; kills it and raises TimeoutExpired after
    ``timeout`` seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    say(f"{what}: started; full log in {log}")
    start = clock()
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, **popen)
        while True:
            left = timeout - (clock() - start)
            try:
                code = process.wait(timeout=max(0.0, min(every, left)))
                break
            except subprocess.TimeoutExpired:
                if clock() - start >= timeout:
                    process.kill()
                    process.wait()
                    say(f"{what}: killed after {timeout:.0f} s; full log in {log}")
                    raise subprocess.TimeoutExpired(command, timeout) from None
                say(f"{what}: {clock() - start:.0f} s: {last_line(log) or '(no output yet)'}")
    say(f"{what}: {'done' if code == 0 else f'exited {code}'} in {clock() - start:.0f} s")
    return code
