"""Progress: a bar on a terminal, a line now and then in a log, nothing from ranks that stay quiet."""

from __future__ import annotations

import io
import logging
import sys
import time

import pytest

from salesfc import progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="salesfc.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "salesfc.progress"]


def test_in_a_log_a_line_at_the_start_and_then_one_per_interval(lines):
    clock = Clock()
    stream = io.StringIO()
    bar = progress.Progress("fitting", total=4, unit="fit", stream=stream, terminal=False, clock=clock, log_every=30)
    assert lines() == ["fitting ... (4 fits)"]
    clock.now = 10
    bar.update()
    assert len(lines()) == 1  # not yet due
    clock.now = 31
    bar.update()
    assert lines()[-1] == "fitting: 2 of 4 fits (50%), 31 s so far, about 31 s left"
    clock.now = 40
    bar.tick()
    assert len(lines()) == 2
    clock.now = 62
    bar.tick()  # the heartbeat: a line is due although no step finished
    assert lines()[-1].startswith("fitting: 2 of 4 fits") and len(lines()) == 3
    assert stream.getvalue() == ""  # a log never gets a bar


def test_on_a_terminal_a_bar_and_no_log_lines(lines):
    stream = io.StringIO()
    bar = progress.Progress("training", total=10, unit="step", stream=stream, terminal=True)
    bar.update(5)
    bar.tick()  # the heartbeat's redraw (tqdm redraws on update only every 0.1 s)
    bar.close()
    text = stream.getvalue()
    assert "training" in text and "5/10" in text
    assert lines() == []


def test_on_a_terminal_a_log_line_prints_once_above_the_bar(monkeypatch):
    # The console handler writes to stderr, as cli.setup_logging's does; here stderr is the bar's stream.
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr(root, "level", logging.INFO)
    bar = progress.Progress("training", total=10, unit="step", stream=stream, terminal=True)
    bar.update(5)
    logging.getLogger("salesfc.train").info("epoch 1/2 done")
    bar.close()
    logging.getLogger("salesfc.train").info("after the bar")
    # Written through the bar, a line starts where the bar's redraw left the cursor: after its last carriage return
    # it would read "training: 50%|...| 5/10 ...epoch 1/2 done".
    shown = [line.rsplit("\r", 1)[-1] for line in stream.getvalue().split("\n")]
    assert shown.count("epoch 1/2 done") == 1, stream.getvalue()
    assert root.handlers == [handler] and shown.count("after the bar") == 1  # the console handler is back


def test_a_stage_that_is_one_long_call_still_says_it_is_running(lines, monkeypatch):
    monkeypatch.setattr(progress, "REFRESH_EVERY", 0.01)
    with progress.stage("reading features", stream=io.StringIO(), terminal=False, log_every=0.05):
        time.sleep(0.3)
    said = lines()
    assert said[0] == "reading features ..."
    assert any(line.startswith("reading features: still running") for line in said[1:-1]), said
    assert said[-1].startswith("reading features: done in 0.")


def test_a_failing_stage_does_not_say_done(lines):
    with pytest.raises(RuntimeError), progress.stage("broken", stream=io.StringIO(), terminal=False):
        raise RuntimeError("boom")
    assert not [line for line in lines() if "done" in line]


def test_a_disabled_stage_says_nothing(lines):
    stream = io.StringIO()
    with progress.stage("other rank", total=3, stream=stream, terminal=True, enabled=False) as bar:
        bar.update(3)
    assert lines() == [] and stream.getvalue() == ""
