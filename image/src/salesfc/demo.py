"""demo: the whole pipeline on one machine, on the embedded default store: prep -> train -> infer.

The same stages, with the same settings, as the chart runs on a cluster; training uses torchrun with 2 processes
(gloo on CPU) unless --nproc-per-node says otherwise.
"""

from __future__ import annotations

import time

from salesfc import infer, prep, train
from salesfc.workspace import shown

DEMO_PROCESSES = 2


def run(config) -> int:
    timings: dict[str, float] = {}
    run_id = config.run_id or train.new_run_id()
    stages = (
        ("prep", prep.run, config.for_command("prep")),
        ("train", train.run, config.for_command("train").replace(
            run_id=run_id, nproc_per_node=config.nproc_per_node or DEMO_PROCESSES)),
        ("infer", infer.run, config.for_command("infer").replace(run_id=run_id)),
    )
    started = time.perf_counter()
    for name, stage, stage_config in stages:
        print(f"== salesfc {name}", flush=True)
        tick = time.perf_counter()
        code = stage(stage_config)
        timings[name] = time.perf_counter() - tick
        if code:
            print(f"demo: {name} failed (exit {code})")
            return code
    total = time.perf_counter() - started
    workspace = config.workspace
    report = workspace.report_dir(run_id)
    print("== done")
    print("demo: " + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items())
          + f", total {total:.1f}s")
    print(f"demo: data      {shown(workspace.data)}/ (engineered tables, prep.json)")
    print(f"demo: features  {shown(workspace.feast)}/ (Feast registry and online store)")
    print(f"demo: model     {shown(workspace.run_dir(run_id))}/ (model.pt, checkpoint.pt, preprocess.json, "
          "training.json)")
    print(f"demo: report    {shown(report)}/report.md (metrics.json, predictions.parquet, plots)")
    print(f"demo: check it: salesfc check --workdir {shown(workspace.root)} --run-id {run_id}")
    return 0
