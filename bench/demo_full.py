"""The README's first command at full size: `salesfc demo --size full` in a fresh working directory, timed; then
`salesfc infer` once more on the same run, which is what a deployment's infer costs from then on (the tree peer's
forecasts cached, the held-out weeks' features read).

    python bench/demo_full.py [--size full]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, machine  # noqa: E402


def salesfc(*args: str, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    """Run one salesfc command as a user would; its output and wall seconds, process start to exit."""
    tick = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "salesfc", *args], env=env, text=True, capture_output=True)
    seconds = time.perf_counter() - tick
    if result.returncode:
        raise SystemExit(f"salesfc {args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-3000:]}")
    return result, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="full")
    args = parser.parse_args()
    print(f"demo on {machine()}")
    workdir = CACHE / f"demo-{args.size}"
    shutil.rmtree(workdir, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALESFC_")}
    result, seconds = salesfc("demo", "--size", args.size, "--workdir", str(workdir), env=env)
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("infer: run"))
    print("\n".join(line for line in lines[start:] if not line.startswith("demo: check")))
    print(f"salesfc demo --size {args.size}: {seconds:.1f} s wall, process start to exit (goal < 300 s)")
    _, seconds = salesfc("infer", "--workdir", str(workdir), env=env)
    print(f"salesfc infer again (baselines cached): {seconds:.1f} s wall, process start to exit (goal < 15 s)")


if __name__ == "__main__":
    main()
