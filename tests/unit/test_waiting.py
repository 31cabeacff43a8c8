"""Waiting for inputs: bounded, with backoff, saying what is awaited."""

import pytest

from salesfc.errors import NotReady
from salesfc.waiting import wait_for


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_waits_with_backoff_until_ready():
    clock, answers = Clock(), iter(["no", "no", "no", None])
    wait_for("thing", lambda: next(answers), timeout=60, sleep=clock.sleep, clock=clock)
    assert clock.now == 1 + 2 + 4


def test_gives_up_with_the_last_reason():
    clock = Clock()
    with pytest.raises(NotReady, match=r"thing: still missing \(waited 10 s\)"):
        wait_for("thing", lambda: "still missing", timeout=10, sleep=clock.sleep, clock=clock)
    assert clock.now == pytest.approx(10)


def test_timeout_zero_checks_once():
    calls = []
    with pytest.raises(NotReady, match="^thing: nope$"):
        wait_for("thing", lambda: calls.append(1) or "nope", timeout=0)
    assert len(calls) == 1


def test_a_stage_waits_for_the_data_it_was_given_not_any_data(tmp_path):
    from salesfc.workspace import Workspace, wait_for_manifest, write_json

    workspace = Workspace(tmp_path)
    with pytest.raises(NotReady, match="does not exist yet"):
        wait_for_manifest(workspace, "data-a", timeout=0)
    write_json(workspace.manifest, {"data_id": "data-a", "fingerprint": "f"})
    assert wait_for_manifest(workspace, "data-a", timeout=0)["fingerprint"] == "f"
    assert wait_for_manifest(workspace, None, timeout=0)["data_id"] == "data-a"
    with pytest.raises(NotReady, match="describes data 'data-a', not 'data-b'"):
        wait_for_manifest(workspace, "data-b", timeout=0)
