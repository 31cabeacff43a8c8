"""What the benchmarks share: the repository, a full-size prepared workspace, and running the CLI."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("SALESFC_BENCH_DIR", REPO / ".cache" / "bench"))


def cli_env(env: dict | None = None) -> dict:
    """This environment without SALESFC_*: the benchmarks set their settings as flags, never by accident."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("SALESFC_")}, **(env or {})}


def salesfc(*args: str, env: dict | None = None, quiet: bool = True) -> float:
    """Run the CLI as a user would; return its wall time. Its output is shown only when it fails."""
    full_env = cli_env(env)
    tick = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "salesfc", *args], env=full_env, text=True,
                            capture_output=quiet)
    seconds = time.perf_counter() - tick
    if result.returncode:
        raise SystemExit(f"salesfc {' '.join(args)} failed ({result.returncode}):\n{result.stdout or ''}"
                         f"{(result.stderr or '')[-3000:]}")
    return seconds


def prepared(size: str = "full", stores: int | None = None) -> Path:
    """A workspace with ``size`` synthetic data (the default data seed; ``stores`` stores instead of the size's)
    prepared in the local store. prep is idempotent, so a second benchmark finds it ready after a quick check."""
    workdir = CACHE / (size if stores is None else f"{size}-{stores}-stores")
    salesfc("prep", "--size", size, "--workdir", str(workdir), *(["--stores", str(stores)] if stores else []))
    return workdir


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.node() or 'host'}: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
            f"{gpu}, torch {torch.__version__}, Python {platform.python_version()}")


def table(rows: list[list], header: list[str]) -> str:
    cells = [header, *[[c if isinstance(c, str) else f"{c:,.2f}" if isinstance(c, float) else f"{c:,}"
                        for c in row] for row in rows]]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])
