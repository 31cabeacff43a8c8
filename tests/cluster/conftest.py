"""The cluster tier: the chart installed on a real control plane (scripts/control_plane.py).

One control plane per Trainer version for the whole session (``bed``, parametrized indirectly: a test names the
versions it runs on with ``ON_ALL`` or ``ON_LATEST``; a (version, feature gates) pair is a control plane of its own,
``ON_ALL_WITH_TRAINJOB_STATUS``). The fixture stops only the processes it started and fails the
session when any of them is still alive afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(Path(__file__).parent))

import control_plane  # noqa: E402


@pytest.fixture(scope="session")
def bed(request) -> control_plane.Bed:
    param = getattr(request, "param", control_plane.TRAINER_VERSIONS[-1])
    trainer, gates = (param, ()) if isinstance(param, str) else param
    with control_plane.running(trainer, feature_gates=gates) as bed:
        yield bed
    # running() raises when a process outlives it; this says so once more in the test report.
    assert not bed.leftover_processes()
