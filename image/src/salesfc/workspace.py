"""The layout of the shared working directory, and writes that a reader never sees half-done.

    <workdir>/data/            engineered tables (parquet) and prep.json, the manifest prep writes last
    <workdir>/feast/           local registry and online store (the 'local' feature store only)
    <workdir>/models/<run-id>/ model.pt, checkpoint.pt, preprocess.json, training.json
    <workdir>/models/LATEST    the id of the last run that finished training
    <workdir>/reports/<run-id>/ predictions.parquet, metrics.json, report.md and its plots
    <workdir>/baselines/       the tree peer's cached forecasts (salesfc.baselines)
    <workdir>/backtests/<id>/  backtest.json, backtest.md, predictions.parquet, plots, and one model per fold

Every file is written under a temporary name in the same directory and renamed into place: on a shared volume
another pod may read at any moment, and a rename is atomic where a write is not.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

LATEST = "LATEST"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def feast(self) -> Path:
        return self.root / "feast"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def manifest(self) -> Path:
        return self.data / "prep.json"

    @property
    def baselines(self) -> Path:
        return self.root / "baselines"

    def backtest_dir(self, backtest_id: str) -> Path:
        return self.root / "backtests" / backtest_id

    def run_dir(self, run_id: str) -> Path:
        return self.models / run_id

    def report_dir(self, run_id: str) -> Path:
        return self.root / "reports" / run_id

    def latest_run(self) -> str | None:
        try:
            return (self.models / LATEST).read_text().strip() or None
        except FileNotFoundError:
            return None


def shown(path: Path) -> str:
    """``path`` as a person typed it: relative to the current directory when it is under it (`make demo`'s
    ./salesfc-work), else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes files private; pods of this release share the volume (other UIDs in group 0 on OpenShift).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, value) -> None:
    write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path):
    return json.loads(path.read_text())


def wait_for_manifest(workspace: Workspace, data_id: str | None, timeout: float) -> dict:
    """prep's manifest, once it exists (and, given ``data_id``, once it describes that data)."""
    from salesfc.waiting import wait_for

    path = workspace.manifest

    def missing() -> str | None:
        if not path.exists():
            return f"{path} does not exist yet (run `salesfc prep`)"
        found = read_json(path).get("data_id")
        if data_id and found != data_id:
            return f"{path} describes data {found!r}, not {data_id!r} (prep has not finished with the new data)"
        return None

    wait_for("prepared data", missing, timeout)
    return read_json(path)
