"""Waiting for a stage's inputs: bounded, with backoff, and saying what it waits for.

On the cluster every stage starts at once (the TrainJob and the inference Job do not wait for Helm's hooks), so
each one waits for what it needs: the database, the prepared data, the model. Locally the timeout is 0: inputs
are checked once and a missing one is an error that says which command makes it.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from salesfc.errors import NotReady

log = logging.getLogger(__name__)


def wait_for(what: str, check: Callable[[], str | None], timeout: float, *, first_delay: float = 1.0,
             max_delay: float = 30.0, sleep: Callable[[float], None] = time.sleep,
             clock: Callable[[], float] = time.monotonic) -> None:
    """Call ``check`` until it returns None (ready). It returns a reason string while not ready.

    Raises NotReady with the last reason once ``timeout`` seconds have passed (at once if timeout is 0).
    """
    deadline = clock() + timeout
    delay = first_delay
    announced = False
    while True:
        reason = check()
        if reason is None:
            if announced:
                log.info("%s: ready", what)
            return
        left = deadline - clock()
        if left <= 0:
            raise NotReady(f"{what}: {reason}" + (f" (waited {timeout:.0f} s)" if timeout else ""))
        log.info("waiting for %s: %s (%.0f s left)", what, reason, left)
        announced = True
        sleep(min(delay, left))
        delay = min(delay * 2, max_delay)
