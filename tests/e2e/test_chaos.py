"""A small chaos run (``bench/chaos.py``): jobs through the local stack with every simulator fault on at random.

``make chaos`` (``python -m bench.chaos``) runs the full 500 jobs. The judge's rules are checked
first on hand-made jobs, so a check that could never fire is caught without a stack.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from bench.chaos import (
    AWS_FAULT_BURST,
    AWS_FAULT_RATES,
    FAULT_RATES,
    ChaosConfig,
    parse_aws_faults,
    read_aws_faults_applied,
    reason_problems,
    run,
    stack_arguments,
    task_problems,
)


def job(status: str, code: str | None = None, stage: str | None = None) -> dict[str, Any]:
    return {"jobId": "j1", "status": status, "errorCode": code, "errorStage": stage, "history": []}


def task(answer: str = "accepted", state: str = "success", *faults: str) -> dict[str, Any]:
    return {"taskId": "t", "state": state, "expired": False, "faults": list(faults), "submit_answer": answer}


def checks(found: list[tuple[str, str]]) -> list[str]:
    return [check for check, _detail in found]


def test_paid_twice_is_counted_from_the_tasks_created_whatever_the_answers_said() -> None:
    two = [task("502 html", "success", "submit_5xx_after_create"), task()]
    assert checks(task_problems(job("COMPLETED"), two)) == ["jobs submitted more than once"]
    assert checks(task_problems(job("COMPLETED"), [task()])) == []


def test_an_ambiguous_submit_may_leave_one_task_or_none_a_refusal_none() -> None:
    ambiguous = job("FAILED", "submit_ambiguous", "submit")
    assert task_problems(ambiguous, [task("connection reset", "success", "reset_after_read")]) == []
    assert task_problems(ambiguous, []) == []  # a 500 that created nothing looks the same to the client
    assert task_problems(job("FAILED", "provider_unavailable", "submit"), []) == []
    refused_but_paid = task_problems(job("FAILED", "provider_unavailable", "submit"), [task("504 html", "success", "submit_5xx_after_create")])
    assert checks(refused_but_paid) == ["FAILED as refused although the provider created a task"]
    assert checks(task_problems(job("FAILED", "generation_failed", "provider"), [])) == ["jobs accepted by the provider without a task"]
    assert checks(task_problems(job("COMPLETED"), [])) == ["jobs accepted by the provider without a task"]


def test_a_failure_needs_a_specific_possible_reason() -> None:
    assert checks(reason_problems(job("FAILED", None, "submit"))) == ["FAILED without a specific reason"]
    assert checks(reason_problems(job("FAILED", "internal_error", "finalize"))) == ["FAILED without a specific reason"]
    assert checks(reason_problems(job("FAILED", "provider_not_configured", "finalize"))) == ["FAILED with a reason impossible in this run"]
    assert checks(reason_problems(job("FAILED", "pairing_timeout", "intake"))) == ["FAILED with a reason impossible in this run"]
    assert reason_problems(job("FAILED", "generation_failed", "provider")) == []


def test_aws_faults_are_passed_to_the_stack_and_their_counts_read_back(tmp_path: Path) -> None:
    assert "--aws-faults" not in stack_arguments(ChaosConfig())  # none by default
    rates = parse_aws_faults("s3_500=0.05, kill=0.02")
    args = stack_arguments(ChaosConfig(seed=9, aws_faults=rates))
    given = json.loads(args[args.index("--aws-faults") + 1])
    # Error faults come in bursts that outlast botocore's retries; a kill is one cut.
    assert given == {"seed": 9, "rules": [{"fault": "s3_500", "rate": 0.05, "burst": AWS_FAULT_BURST}, {"fault": "kill", "rate": 0.02}]}
    with pytest.raises(argparse.ArgumentTypeError, match="unknown AWS fault 'meteor'"):
        parse_aws_faults("meteor=0.1")
    with pytest.raises(argparse.ArgumentTypeError, match="rate from 0 to 1"):
        parse_aws_faults("kill=2")
    assert read_aws_faults_applied(tmp_path) == {}
    (tmp_path / "aws-faults.json").write_text(json.dumps({"rules": [{"fault": "kill", "rate": 0.02, "applied": 3}]}))
    assert read_aws_faults_applied(tmp_path) == {"kill": 3}


def test_the_settle_timeout_grows_with_the_jobs() -> None:
    assert ChaosConfig(jobs=500).settle_seconds > ChaosConfig(jobs=48).settle_seconds >= 240
    assert ChaosConfig(jobs=500, timeout_seconds=60).settle_seconds == 60


@pytest.mark.e2e
@pytest.mark.chaos
@pytest.mark.timeout(300)
def test_nothing_lost_nothing_submitted_twice_under_every_fault(tmp_path: Path) -> None:
    # Higher rates than the full run, so a few dozen jobs still meet every fault, the ones that
    # create the task and then fail the answer (502/504/500, a reset, a late answer) among them.
    # AWS-side faults too: S3, DynamoDB and Secrets Manager errors that outlast botocore's
    # retries, and handlers cut off at random points.
    rates = {name: min(0.3, rate * 2) for name, rate in FAULT_RATES.items()}
    aws_faults = {name: rate * 2 for name, rate in AWS_FAULT_RATES.items()}
    # 210 s to settle: a finalize cut off after copying waits for the reconciler's nudge (CI once saw a
    # SUCCEEDED job, its result already copied, still waiting for it when 150 s ran out).
    config = ChaosConfig(jobs=48, seed=11, rates=rates, aws_faults=aws_faults, job_deadline_seconds=20, claim_settle_seconds=4, timeout_seconds=210)
    report = run(config, tmp_path)
    print(report.table())
    assert {"submit_5xx_after_create", "reset_after_read", "read_timeout"} <= set(report.faults_applied)
    assert report.aws_faults_applied.get("kill", 0) > 0 and sum(report.aws_faults_applied.values()) > report.aws_faults_applied["kill"]
    assert report.ok, report.table()
    assert sum(sum(states.values()) for states in report.jobs_by_provider.values()) == config.jobs
    assert set(report.jobs_by_provider) == {"kie", "apikley", "runware", "crun", "runway", "replicate"}
    assert all(count > 0 for count in report.faults_applied.values()), report.faults_applied  # every fault was met
    assert report.tasks_per_job.keys() <= {0, 1}
    assert report.duplicate_events > 0
