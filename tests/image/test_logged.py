"""The image build's log streaming (tests/image/logged.py), checked without building anything."""

from __future__ import annotations

import subprocess
import sys

import pytest
from logged import last_line, run_logged


def test_says_where_the_log_is_and_streams_the_last_line_while_it_runs(tmp_path):
    said: list[str] = []
    log = tmp_path / "build.log"
    script = "import time\nfor i in range(6):\n    print(f'STEP {i}/6', flush=True)\n    time.sleep(0.15)\n"
    code = run_logged([sys.executable, "-c", script], log, what="build", say=said.append, timeout=30, every=0.2)
    assert code == 0
    assert said[0] == f"build: started; full log in {log}"
    running = [line for line in said[1:-1] if "STEP" in line]
    assert running and all(line.startswith("build: ") for line in running), said
    assert said[-1].startswith("build: done in")
    assert log.read_text().count("STEP") == 6


def test_a_failure_gives_its_exit_status_and_a_hung_build_is_killed(tmp_path):
    said: list[str] = []
    assert run_logged([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "a.log", what="b", say=said.append,
                      timeout=30) == 3
    assert said[-1].startswith("b: exited 3 in")
    with pytest.raises(subprocess.TimeoutExpired):
        run_logged([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "b.log", what="b",
                   say=said.append, timeout=0.5, every=0.1)
    assert said[-1].startswith("b: killed after")


def test_last_line_is_the_latest_state_of_a_redrawn_line(tmp_path):
    log = tmp_path / "log"
    log.write_bytes(b"first\nCollecting torch\r 10%\r 55%\n\n   \n")
    assert last_line(log) == "55%"
    log.write_text("x" * 500 + "\n")
    assert last_line(log, limit=20) == "x" * 17 + "..."
    assert last_line(tmp_path / "missing") == ""
