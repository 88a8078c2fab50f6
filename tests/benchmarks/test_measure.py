"""The benchmark's measuring helper (benchmarks/common.py) on the kernel counters' edge
cases, which a real run only meets by chance."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def common():
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_disk_wait_counter_that_steps_back_is_reported_as_no_wait(common, monkeypatch, tmp_path) -> None:
    """proc_stat(5): the iowait field "may decrease in certain conditions"; the run's disk
    wait is then 0, never negative, while a counter that moves forward is reported as is."""
    readings = iter([(100.0, 50.0), (100.5, 49.0), (200.0, 10.0), (200.5, 11.25)])
    monkeypatch.setattr(common, "machine_cpu_seconds", lambda: next(readings))
    back = common.run_measured([sys.executable, "-c", "pass"], log_prefix=tmp_path / "back")
    forward = common.run_measured([sys.executable, "-c", "pass"], log_prefix=tmp_path / "forward")
    assert back["iowait_s"] == 0.0
    assert forward["iowait_s"] == 1.25
