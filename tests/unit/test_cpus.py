"""The CPU budget comes from the container's cgroup quota, not from the host's core count."""

from __future__ import annotations

import os

import pytest

from salesfc import cpus


def cgroup_v2(tmp_path, text: str):
    (tmp_path / "cpu.max").write_text(text)
    return tmp_path


def cgroup_v1(tmp_path, quota: int, period: int):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path


@pytest.mark.parametrize("text, expected", [("250000 100000\n", 2.5), ("max 100000\n", None), ("50000 100000", 0.5)])
def test_cgroup_v2_quota(tmp_path, text, expected):
    assert cpus.cgroup_cpu_limit(cgroup_v2(tmp_path, text)) == expected


def test_cgroup_v1_quota_and_no_quota(tmp_path):
    assert cpus.cgroup_cpu_limit(cgroup_v1(tmp_path, 300000, 100000)) == 3.0
    assert cpus.cgroup_cpu_limit(cgroup_v1(tmp_path / "cpu", -1, 100000)) is None
    assert cpus.cgroup_cpu_limit(tmp_path / "nothing-here") is None


def test_budget_is_the_quota_rounded_up_and_never_more_than_the_cpus_we_may_run_on(tmp_path):
    runnable = len(os.sched_getaffinity(0))
    assert cpus.available_cpus(cgroup_v2(tmp_path, "50000 100000")) == 1
    assert cpus.available_cpus(cgroup_v2(tmp_path, f"{(runnable + 8) * 100000} 100000")) == runnable
    assert cpus.available_cpus(cgroup_v2(tmp_path, "max 100000")) == runnable


def test_threads_per_process_divides_the_budget_and_a_single_process_obeys_omp_num_threads(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    root = cgroup_v2(tmp_path, "400000 100000")
    budget = cpus.available_cpus(root)
    assert cpus.threads_per_process(2, root) == max(1, budget // 2)
    assert cpus.threads_per_process(64, root) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpus.threads_per_process(1, root) == 3
    # torchrun's default of 1 for its workers must not starve them.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpus.threads_per_process(2, root) == max(1, budget // 2)
