"""A private Spark standalone cluster on this machine: one master and its workers, each its own JVM, started with
the `spark-class` launcher that pyspark installs beside the venv's python, through salesfc.spark_env: exactly as
the chart's featureStore.spark pods start them. The tests and bench/engines.py send salesfc's reads to it with
--spark-master spark://127.0.0.1:PORT: the driver stays in the salesfc process, the executors run in the
workers, so the path is the cluster one (tasks shipped to other JVMs, results sent back), not local mode.

    with standalone_cluster(tmp_path, workers=1, cores=2, memory="4g") as cluster:
        ...  # cluster.url == "spark://127.0.0.1:PORT"; cluster.processes: the master's and the workers'
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from processes import free_port

START_TIMEOUT_S = 90


@dataclass
class Cluster:
    url: str  # the master's spark:// URL
    processes: list[subprocess.Popen]  # the master's, then each worker's (an executor is a worker's child)


def _start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    # The chart's command: pyspark's launcher through salesfc.spark_env (SPARK_HOME, a user name for the UID).
    spark_class = Path(sys.executable).parent / "spark-class"
    return subprocess.Popen([sys.executable, "-m", "salesfc.spark_env", str(spark_class), *args],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_for(log: Path, text: str, proc: subprocess.Popen, count: int = 1) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = log.read_text(errors="replace") if log.exists() else ""
        if found.count(text) >= count:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{log.name}: the process exited ({proc.returncode}):\n{found[-3000:]}")
        time.sleep(0.5)
    raise RuntimeError(f"{log.name}: no {text!r} after {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def standalone_cluster(folder: Path, workers: int = 1, cores: int = 2, memory: str = "4g"):
    """Start a master on 127.0.0.1 and ``workers`` workers of ``cores`` cores and ``memory`` for executors; yield the
    Cluster; stop them all (their process groups) on the way out."""
    folder.mkdir(parents=True, exist_ok=True)
    # The workers write their executors' logs and scratch space here, never under the installed pyspark.
    env = {**os.environ, "SPARK_LOG_DIR": str(folder), "SPARK_LOCAL_DIRS": str(folder / "local"),
           "SPARK_NO_DAEMONIZE": "1"}
    port = free_port()
    started: list[subprocess.Popen] = []
    try:
        master_log = folder / "master.log"
        master = _start(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                         "--webui-port", str(free_port())], master_log, env)
        started.append(master)
        _wait_for(master_log, "I have been elected leader", master)
        url = f"spark://127.0.0.1:{port}"
        for index in range(workers):
            log = folder / f"worker-{index}.log"
            started.append(_start(["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores",
                                   str(cores), "--memory", memory, "--webui-port", str(free_port()), "--work-dir",
                                   str(folder / f"work-{index}"), url], log, env))
        _wait_for(master_log, "Registering worker", master, count=workers)
        yield Cluster(url, started)
    finally:
        for proc in reversed(started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
        for proc in started:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
