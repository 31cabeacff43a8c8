"""Fixtures of the chart tests (helpers live in chartlib.py, beside this file)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from chartlib import CHART  # noqa: E402


@pytest.fixture(scope="session")
def chart_values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.fixture(scope="session")
def chart_meta() -> dict:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())
