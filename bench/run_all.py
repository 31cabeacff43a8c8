"""Every benchmark, one after the other, each printing its figures (see bench/README.md).

    python bench/run_all.py [--only demo_full,retrieval,serving,training_speed,accuracy,scale,engines]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# scale near the end: the longest (10x stores; its first infer fits the tree peer on 3M rows); engines reuses its
# prepared 1x and 10x data.
ORDER = ("demo_full", "retrieval", "serving", "training_speed", "accuracy", "scale", "engines")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(ORDER))
    args = parser.parse_args()
    failed = []
    for name in args.only.split(","):
        print(f"\n===== bench/{name}.py", flush=True)
        tick = time.perf_counter()
        code = subprocess.call([sys.executable, str(BENCH / f"{name}.py")])
        outcome = "ok" if code == 0 else f"FAILED ({code})"
        print(f"===== bench/{name}.py: {outcome} in {time.perf_counter() - tick:.0f} s", flush=True)
        if code:
            failed.append(name)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
