"""Retail scale (issue 13): prep, the training-set retrieval, a short training and infer on synthetic data with 1x,
3x and 10x the stores (45, 135, 450 stores at full size: ~0.43M, 1.3M, 4.3M label rows), each stage in fresh
processes, with its wall time and the peak memory of every process it starts (torchrun's ranks included).

Memory: every 0.2 s the stage's process tree is walked (psutil) and each process's VmHWM (its own peak resident
set, kept by the kernel) is read from /proc/<pid>/status, so a peak between two samples is not missed; only what a
process adds in its last 0.2 s is. The stage's root is reaped with wait4, whose ru_maxrss is the largest process
of the tree the kernel saw (every parent waits for its children): the "largest process" figure is the larger of
the two. "processes" counts the distinct processes the walk saw (a process that lives under 0.2 s may be missed).

infer runs twice: the first fits the tree peer (a 3-setting search, cached in the workdir) as a user's first infer
does, and takes minutes at 1x; "infer again" reads the cached peer, what every later infer costs. --stage-timeout
stops a stage that runs longer (its whole process group) and reports its figures so far, marked "stopped".

    python bench/scale.py [--sizes 1,3,10] [--epochs 2]     # in `make bench`
    python bench/scale.py --sizes 30                          # 30x (1,350 stores, ~13M rows): its own command,
                                                              # not in `make bench` (~16 min here; 9.1 GiB in the
                                                              # largest process, bench/README.md)
    python bench/scale.py --sizes 1,30                        # the same with 1x beside it, for the growth ratios
    python bench/scale.py --stage-timeout 900                 # bound each stage (the first infer at 10x: 13 min here)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, cli_env, machine, table  # noqa: E402

STORES_1X = 45  # the full size's stores: the Kaggle data's 45
PROCS = 2  # training ranks: the goal is stated for 2 ranks on 2 cores
STAGES = ("prep", "retrieval", "train", "infer", "infer again")
SAMPLE_S = 0.2
GIB = 2 ** 30
GOAL_TIME_GROWTH_10X = 11.0
GOAL_PEAK_GIB_10X = 4.0


@dataclass
class Measured:
    seconds: float
    peak_bytes: int  # the largest process's peak resident set
    processes: int
    code: int
    log: Path
    stopped: bool = False  # past --stage-timeout: the figures are the stage's so far

    @property
    def outcome(self) -> str:
        return "stopped at the limit" if self.stopped else "ok" if self.code == 0 else f"FAILED ({self.code})"


def high_water(pid: int) -> int:
    """The process's peak resident set so far (VmHWM, bytes); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def sample(root: psutil.Process, peaks: dict) -> None:
    """Record each live process of the tree under its (pid, start time): pids can be reused within a stage."""
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in tree:
        try:
            key = (proc.pid, proc.create_time())
        except psutil.NoSuchProcess:
            continue
        peaks[key] = max(peaks.get(key, 0), high_water(proc.pid))


def run_measured(command: list[str], env: dict, log: Path, limit: float = 0) -> Measured:
    log.parent.mkdir(parents=True, exist_ok=True)
    peaks: dict = {}
    stopped = False
    with log.open("w") as out:
        tick = time.perf_counter()
        # Its own process group, so that a stage past the limit is stopped with every process it started.
        child = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        root = psutil.Process(child.pid)
        while True:
            sample(root, peaks)
            # wait4 rather than poll(): it also returns the tree's largest ru_maxrss, exact where sampling is late.
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if limit and not stopped and time.perf_counter() - tick > limit:
                os.killpg(child.pid, signal.SIGTERM)
                stopped = True
            time.sleep(SAMPLE_S)
        seconds = time.perf_counter() - tick
    child.returncode = os.waitstatus_to_exitcode(status)
    largest = max([usage.ru_maxrss * 1024, *peaks.values()])  # ru_maxrss is in KiB on Linux
    return Measured(seconds, largest, len(peaks), child.returncode, log, stopped)


def stage_command(stage: str, workdir: Path, stores: int, epochs: int) -> list[str]:
    cli = [sys.executable, "-m", "salesfc"]
    where = ["--workdir", str(workdir)]
    if stage == "prep":
        return [*cli, "prep", "--size", "full", "--stores", str(stores), *where]
    if stage == "retrieval":  # this file again, in its own process: see retrieve()
        return [sys.executable, str(Path(__file__).resolve()), "--retrieve", str(workdir)]
    if stage == "train":
        return [*cli, "train", "--epochs", str(epochs), "--nproc-per-node", str(PROCS), "--members", "1", *where]
    return [*cli, "infer", *where]  # "infer" and "infer again": the same command, the second finds the peer cached


def stage_env(stage: str) -> dict:
    """train's launcher sets OMP_NUM_THREADS for its ranks itself (the cores shared between them): leave it to it.
    Elsewhere pin it to the cores this process may use, so the figures do not depend on the caller's setting."""
    from salesfc import cpus

    env = cli_env()
    env.pop("OMP_NUM_THREADS", None)
    if stage != "train":
        env["OMP_NUM_THREADS"] = str(cpus.available_cpus())
    return env


def retrieve(workdir: Path) -> None:
    """The retrieval stage's process: the whole training set through Feast as backtest reads it (and a training
    rank its shard): feature_store.shard_features in reads of the default --rows-per-read, float32 features, timed
    as bench/retrieval.py times it (after one small warm-up read); one JSON line for the parent."""
    from retrieval import store_config, timed_retrieval

    from salesfc import feature_store, settings

    rows_per_read = settings.Config.defaults("train").rows_per_read

    def whole_in_reads(store, _labels):
        rows = int(feature_store.label_counts(store).sum())
        return feature_store.shard_features(store, 0, 1, feature_store.reads_per_shard(rows, 1, rows_per_read))

    seconds, frame, entity_rows = timed_retrieval(store_config(workdir, "local"), whole_in_reads)
    print(json.dumps({"read_seconds": seconds, "entity_rows": entity_rows, "rows": len(frame)}))


def read_result(log: Path) -> dict:
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def run_size(multiple: int, epochs: int, limit: float) -> dict[str, Measured]:
    """Every stage on a fresh workdir (prep on one already prepared is a quick check, not the work), in order;
    after a failure or a stop the later stages are skipped, since each needs the one before."""
    stores = STORES_1X * multiple
    workdir = CACHE / "scale" / f"full-{stores}-stores"
    shutil.rmtree(workdir, ignore_errors=True)
    results = {}
    for stage in STAGES:
        log = CACHE / "scale" / "logs" / f"{multiple}x-{stage.replace(' ', '-')}.log"
        result = run_measured(stage_command(stage, workdir, stores, epochs), stage_env(stage), log, limit)
        results[stage] = result
        print(f"  {multiple}x {stage}: {result.seconds:.1f} s, largest process {result.peak_bytes / GIB:.2f} GiB, "
              f"{result.processes} processes, {result.outcome}, load average {os.getloadavg()[0]:.1f}",
              flush=True)
        if result.code or result.stopped:
            tail = "\n".join(log.read_text().splitlines()[-15:])
            print(f"  {stage} {result.outcome}; the end of {log}:\n{tail}", flush=True)
            break
    return results


def ratio(results: dict, size: int, base: int, stage: str, field: str) -> str:
    a, b = results[base].get(stage), results[size].get(stage)
    if not a or not b or a.code or a.stopped or (b.code and not b.stopped):
        return "-"
    # A stage stopped at the limit grew at least this much.
    return f"{'> ' if b.stopped else ''}{getattr(b, field) / getattr(a, field):.1f}x"


def report(results: dict[int, dict[str, Measured]], rows_by_size: dict[int, int]) -> None:
    sizes = sorted(results)
    rows = []
    for stage in STAGES:
        for size in sizes:
            m = results[size].get(stage)
            if m is None:
                rows.append([stage, f"{size}x ({STORES_1X * size:,} stores)", "skipped", "", "", ""])
                continue
            rows.append([stage, f"{size}x ({STORES_1X * size:,} stores)", f"{'> ' if m.stopped else ''}{m.seconds:.1f}",
                         f"{m.peak_bytes / GIB:.2f}", m.processes, m.outcome])
    print(table(rows, ["stage", "size", "seconds", "largest process GiB", "processes", "outcome"]))
    if rows_by_size:
        print("label rows: " + ", ".join(f"{s}x {n:,}" for s, n in sorted(rows_by_size.items())))
    base = sizes[0]
    if len(sizes) > 1:
        header = ["stage"] + [f"time {base}x->{s}x" for s in sizes[1:]] + [f"peak {base}x->{s}x" for s in sizes[1:]]
        print(table([[stage] + [ratio(results, s, base, stage, "seconds") for s in sizes[1:]]
                     + [ratio(results, s, base, stage, "peak_bytes") for s in sizes[1:]] for stage in STAGES],
                    header))
    if base == 1 and 10 in results:
        growth = {st: ratio(results, 10, 1, st, "seconds") for st in STAGES}
        print(f"goal: time growth 1x->10x <= {GOAL_TIME_GROWTH_10X:g}x per stage; measured: "
              + ", ".join(f"{st} {g}" for st, g in growth.items()))
    if 10 in results:
        # A stopped stage's peak so far is a lower bound, still worth comparing: say which it is.
        peaks = {st: m.peak_bytes / GIB for st, m in results[10].items() if m.code == 0 or m.stopped}
        worst = max(peaks, key=peaks.get) if peaks else None
        print(f"goal: peak memory of any one process at 10x <= {GOAL_PEAK_GIB_10X:g} GiB with {PROCS} ranks; measured: "
              + (f"{peaks[worst]:.2f} GiB ({worst}{', stopped: at least' if results[10][worst].stopped else ''})"
                 if worst else "no stage finished"))
    print(f"memory: per process, VmHWM of every process of each stage's tree read every {SAMPLE_S} s (psutil "
          f"walk),\n  and the tree's largest ru_maxrss from wait4; retrieval's seconds are its whole process "
          f"(imports, warm-up)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,3,10", help="multiples of the full size's 45 stores, e.g. 1,3,10 or 30")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--stage-timeout", type=float, default=0,
                        help="stop a stage after this many seconds (0: never)")
    parser.add_argument("--retrieve", type=Path, help=argparse.SUPPRESS)  # the retrieval stage's own process
    args = parser.parse_args()
    if args.retrieve:
        return retrieve(args.retrieve)

    sizes = sorted({int(s) for s in args.sizes.split(",")})
    print(f"scale on {machine()}, {psutil.virtual_memory().total / GIB:.0f} GiB; train: {args.epochs} epochs, "
          f"{PROCS} ranks, 1 network; stage limit {args.stage_timeout or 'none'} s; "
          f"logs under {CACHE / 'scale' / 'logs'}", flush=True)
    results, rows_by_size, reads = {}, {}, {}
    for size in sizes:  # smallest first: a failure at a small size shows before the long runs
        print(f"{size}x: {STORES_1X * size} stores, {psutil.virtual_memory().available / GIB:.1f} GiB available, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        results[size] = run_size(size, args.epochs, args.stage_timeout)
        if "retrieval" in results[size]:
            found = read_result(results[size]["retrieval"].log)
            if found:
                rows_by_size[size], reads[size] = found["entity_rows"], found["read_seconds"]
    report(results, rows_by_size)
    if reads:
        print("retrieval, the read alone (shard_features of every series, after a warm-up, as bench/retrieval.py): "
              + ", ".join(f"{s}x {sec:.1f} s" for s, sec in reads.items()))


if __name__ == "__main__":
    main()
