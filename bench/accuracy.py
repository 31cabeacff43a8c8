"""Accuracy on full-size synthetic data: the model against every baseline and the noise floor, for three seeds.

Trains with `salesfc train --nproc-per-node 2` and evaluates with `salesfc infer` (the held-out last 26 weeks),
exactly as the demo does, once per training seed on the same data, and reads each run's metrics.json.

    python bench/accuracy.py [--seeds 0,1,2] [--size full]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, prepared, salesfc, table  # noqa: E402

PEER = "gradient_boosted_trees"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--size", default="full")
    parser.add_argument("--nproc-per-node", default="2")
    args = parser.parse_args()

    print(f"accuracy on {machine()}")
    workdir = prepared(args.size)
    runs = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        run_id = f"bench-accuracy-seed{seed}"
        shutil.rmtree(workdir / "models" / run_id, ignore_errors=True)  # always this code's model
        seconds = salesfc("train", "--workdir", str(workdir), "--seed", str(seed), "--run-id", run_id,
                          "--nproc-per-node", args.nproc_per_node)
        salesfc("infer", "--workdir", str(workdir), "--run-id", run_id)
        metrics = json.loads((workdir / "reports" / run_id / "metrics.json").read_text())
        training = json.loads((workdir / "models" / run_id / "training.json").read_text())
        runs[seed] = (metrics, training, seconds)
        print(f"seed {seed}: trained in {seconds:.0f} s ({training['epochs_run']} epochs, best "
              f"{training['best_epoch']}), held-out WMAE ${metrics['model']['wmae']:,.0f}", flush=True)

    first = next(iter(runs.values()))[0]
    naive = {name: m for name, m in first["baselines"].items() if name != PEER}
    floor = first["noise_floor"]
    rows = [[name, m["wmae"], m["mape"], m["rmse"], m["r2"]] for name, m in first["baselines"].items()]
    if floor:
        rows.append(["noise floor (the signal itself)", floor["wmae"], floor["mape"], floor["rmse"], floor["r2"]])
    for seed, (metrics, _, _) in runs.items():
        m = metrics["model"]
        rows.append([f"model, seed {seed}", m["wmae"], m["mape"], m["rmse"], m["r2"]])
    print(f"\nheld-out weeks: {first['model']['n_rows']:,} rows")
    print(table([[r[0], round(r[1]), f"{r[2]:.2f}%", round(r[3]), f"{r[4]:.4f}"] for r in rows],
                ["forecaster", "WMAE $", "MAPE", "RMSE $", "R2"]))

    wmaes = [metrics["model"]["wmae"] for metrics, _, _ in runs.values()]
    mean = statistics.fmean(wmaes)
    spread = max(abs(w - mean) / mean for w in wmaes)
    best_naive_wmae = min(naive.items(), key=lambda kv: kv[1]["wmae"])
    best_naive_mape = min(naive.items(), key=lambda kv: kv[1]["mape"])
    worst_model_wmae = max(wmaes)
    worst_model_mape = max(metrics["model"]["mape"] for metrics, _, _ in runs.values())
    peer = first["baselines"][PEER]
    print()
    print(f"beats every naive baseline on WMAE: {worst_model_wmae < best_naive_wmae[1]['wmae']} (worst seed "
          f"${worst_model_wmae:,.0f} vs {best_naive_wmae[0]} ${best_naive_wmae[1]['wmae']:,.0f})")
    print(f"beats every naive baseline on MAPE: {worst_model_mape < best_naive_mape[1]['mape']} (worst seed "
          f"{worst_model_mape:.2f}% vs {best_naive_mape[0]} {best_naive_mape[1]['mape']:.2f}%)")
    if floor:
        print(f"WMAE / noise floor: {mean / floor['wmae']:.3f} (mean of seeds; goal <= 1.10; seeds "
              + ", ".join(f"{w / floor['wmae']:.3f}" for w in wmaes) + ")")
    print(f"gap to gradient-boosted trees: model WMAE {100 * (mean / peer['wmae'] - 1):+.1f}%, MAPE "
          f"{statistics.fmean(m['model']['mape'] for m, _, _ in runs.values()) - peer['mape']:+.2f} points "
          f"(negative: the model is better)")
    print(f"seed stability: WMAE mean ${mean:,.0f}, largest deviation {100 * spread:.1f}% (goal within 3%)")


if __name__ == "__main__":
    main()
