"""A small chaos run (``bench/chaos.py``): jobs through the local stack with every simulator fault on at random.

``make chaos`` (``python -m bench.chaos``) runs the full 200 jobs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import FAULT_RATES, ChaosConfig, run

pytestmark = [pytest.mark.e2e, pytest.mark.chaos, pytest.mark.timeout(240)]


def test_nothing_lost_nothing_submitted_twice_under_every_fault(tmp_path: Path) -> None:
    # Higher rates than the full run, so a few dozen jobs still meet every fault.
    rates = {name: min(0.3, rate * 2) for name, rate in FAULT_RATES.items()}
    config = ChaosConfig(jobs=48, seed=11, rates=rates, job_deadline_seconds=20, claim_settle_seconds=4, timeout_seconds=150)
    report = run(config, tmp_path)
    print(report.table())
    assert report.ok, report.table()
    assert sum(sum(states.values()) for states in report.jobs_by_provider.values()) == config.jobs
    assert set(report.jobs_by_provider) == {"kie", "apikley", "runware", "crun"}
    assert all(count > 0 for count in report.faults_applied.values()), report.faults_applied  # every fault was met
    assert report.tasks_per_job.keys() <= {0, 1}
    assert report.duplicate_events > 0
