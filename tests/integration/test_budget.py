"""The spend limits against moto server (real HTTP) and the provider simulator (real HTTP): jobs
submitted at once get through exactly as far as the budget reaches, and a refusal gives the
reservation back."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import boto3
import httpx
import pytest

from aleph_cli.main import main
from aleph_pipeline import budget
from aleph_pipeline.intake import handle_object_created
from aleph_pipeline.jobs import JobState, JobStore
from aleph_pipeline.keys import job_id_for
from aleph_pipeline.reconcile import reconcile
from aleph_pipeline.storage import head
from local.media import make_clip
from local.simulator.server import SimulatorServer

from .conftest import clear_caches
from .test_reconcile import indexed  # noqa: F401  (the fixture: the table with its status index)

pytestmark = pytest.mark.timeout(120)

KIE_KEY = "sim-kie-key"
PRICE_USD = 1.25


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("budget") / "clip.mp4"
    make_clip(path, seconds=3, size="160x120")
    return path.read_bytes()


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    with SimulatorServer("127.0.0.1", 0) as running:
        yield running.url


@pytest.fixture
def priced(aws: dict[str, Any], sim: str, clip: bytes, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """kie at the simulator, at PRICE_USD a job, with a daily budget of ten jobs."""
    monkeypatch.setenv("PROVIDER_ENDPOINTS", json.dumps({"kie": f"{sim}/kie"}))
    monkeypatch.setenv("CALLBACK_API_URL", "https://api.example.test")
    monkeypatch.setenv("PROVIDER_PRICES", json.dumps({"kie": {"perJob": PRICE_USD}}))
    monkeypatch.setenv("DAILY_BUDGET_USD", str(10 * PRICE_USD))
    monkeypatch.setenv("MONTHLY_BUDGET_USD", "")
    monkeypatch.setenv("PROVIDER_RATE_LIMITS", json.dumps({"kie": "none"}))  # the budget, not the pace, is under test
    boto3.client("secretsmanager", endpoint_url=aws["s3"].meta.endpoint_url).put_secret_value(SecretId=aws["secret"], SecretString=json.dumps({"kie": KIE_KEY}))
    clear_caches()
    httpx.post(f"{sim}/_sim/reset").raise_for_status()
    return {**aws, "sim": sim, "clip": clip}


def upload_pair(aws: dict[str, Any], stem: str) -> str:
    aws["s3"].put_object(Bucket=aws["input"], Key=f"{stem}.mp4", Body=aws["clip"])
    aws["s3"].put_object(Bucket=aws["input"], Key=f"{stem}.json", Body=json.dumps({"prompt": "snow", "provider": "kie"}).encode())
    info = head(aws["input"], f"{stem}.json")
    assert info is not None
    return job_id_for(aws["input"], f"{stem}.json", info.version_marker)


def submits(sim: str) -> list[dict[str, Any]]:
    return [r for r in httpx.get(f"{sim}/_sim/requests").json() if r["provider"] == "kie" and r["method"] == "POST"]


def day_spent(aws: dict[str, Any]) -> Decimal:
    key = budget.periods()[0].key
    item = aws["table"].get_item(Key={"jobId": key}, ConsistentRead=True).get("Item") or {}
    return Decimal(item.get("spent", 0))


def test_a_budget_for_ten_of_twenty_jobs_submitted_at_once_lets_exactly_ten_through(priced: dict[str, Any]) -> None:
    stems = [f"incoming/batch/clip-{index:02d}" for index in range(20)]
    job_ids = [upload_pair(priced, stem) for stem in stems]
    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(lambda stem: handle_object_created(priced["input"], f"{stem}.json"), stems))

    jobs = [JobStore().get(job_id) for job_id in job_ids]
    submitted = [job for job in jobs if job is not None and job.state == JobState.SUBMITTED]
    failed = [job for job in jobs if job is not None and job.state == JobState.FAILED]
    assert len(submitted) == 10 and len(failed) == 10, " | ".join(
        f"{job.item['status']} {sorted(job.item)}" for job in jobs if job not in submitted and job not in failed
    )
    assert len(submits(priced["sim"])) == 10  # the provider saw exactly the ten that fit
    assert all(job.item["costEstimate"] == Decimal(str(PRICE_USD)) for job in submitted)
    for job in failed:
        error = job.item["error"]
        assert error["code"] == "budget_exceeded"
        assert "daily budget is $12.50" in error["message"] and "$1.25" in error["message"]
        assert "submission" not in job.item and "providerTaskId" not in job.item  # nothing was sent
    assert day_spent(priced) == Decimal("12.5")

    # The same events again (SQS redelivers): no job reserves twice, nothing more is sent.
    for stem in stems:
        handle_object_created(priced["input"], f"{stem}.json", receive_count=2)
    assert day_spent(priced) == Decimal("12.5")
    assert len(submits(priced["sim"])) == 10


def test_a_refused_submission_gives_its_reservation_back(priced: dict[str, Any]) -> None:
    httpx.post(f"{priced['sim']}/_sim/faults", json=[{"fault": "insufficient_credits", "provider": "kie", "count": 1}]).raise_for_status()
    refused = upload_pair(priced, "incoming/refused/clip")
    handle_object_created(priced["input"], "incoming/refused/clip.json")

    job = JobStore().get(refused)
    assert job is not None and job.state == JobState.FAILED and job.item["error"]["code"] != "budget_exceeded"
    assert len(submits(priced["sim"])) == 1
    assert day_spent(priced) == 0  # reserved, then released: the refusal spent nothing
    reservation = priced["table"].get_item(Key={"jobId": budget.reservation_key(refused)}, ConsistentRead=True)["Item"]
    assert reservation["state"] == budget.RELEASED

    # Released, it can be made again (a move to another provider reserves that one's estimate).
    budget.reserve(refused, "kie", 2.0)
    assert day_spent(priced) == Decimal("2.0")
    budget.release(refused)
    assert day_spent(priced) == 0

    # The budget it gave back is there for the next job.
    taken = upload_pair(priced, "incoming/next/clip")
    handle_object_created(priced["input"], "incoming/next/clip.json")
    found = JobStore().get(taken)
    assert found is not None and found.state == JobState.SUBMITTED
    assert day_spent(priced) == Decimal(str(PRICE_USD))


def test_a_completed_job_settles_its_reservation_at_the_real_cost(
    priced: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "AlephPipeline")
    job_id = upload_pair(priced, "incoming/settle/clip")
    capsys.readouterr()
    handle_object_created(priced["input"], "incoming/settle/clip.json")
    assert day_spent(priced) == Decimal(str(PRICE_USD))
    # The share of the budget used, for the 80 % alarm: 1.25 of 12.50.
    metrics = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"BudgetUsedPercent"' in line]
    assert [(m["BudgetUsedPercent"], m["Budget"]) for m in metrics] == [([10.0], "daily")]

    budget.settle(job_id, "kie", Decimal("0.4"))
    budget.settle(job_id, "kie", Decimal("0.4"))  # finalize run twice settles once
    assert day_spent(priced) == Decimal("0.4")
    reservation = priced["table"].get_item(Key={"jobId": budget.reservation_key(job_id)}, ConsistentRead=True)["Item"]
    assert reservation["state"] == budget.SETTLED and reservation["cost"] == Decimal("0.4")


def test_aleph_cost_prints_the_spend_from_the_jobs_table(
    indexed: dict[str, Any],  # noqa: F811
    priced: dict[str, Any],
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sent = [upload_pair(priced, f"incoming/team-{team}/clip") for team in ("a", "b")]
    for team in ("a", "b"):
        handle_object_created(priced["input"], f"incoming/team-{team}/clip.json")
    priced["table"].update_item(Key={"jobId": sent[1]}, UpdateExpression="SET cost = :cost", ExpressionAttributeValues={":cost": Decimal("0.4")})
    (tmp_path / "stack.json").write_text(
        json.dumps(
            {
                "input_bucket": priced["input"],
                "input_prefix": "incoming/",
                "output_bucket": priced["output"],
                "jobs_table": priced["table_name"],
                "s3_endpoint": priced["s3"].meta.endpoint_url,
            }
        )
    )
    capsys.readouterr()
    assert main(["--local", str(tmp_path), "cost", "--by", "folder", "--since", "2000-01-01"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["team-a", "1", "1.25", "*", "(1.25", "estimated)"]  # kie reports no cost: its estimate, marked
    assert lines[2].split() == ["team-b", "1", "0.40"]  # the reported cost
    assert lines[3].split()[:3] == ["total", "2", "1.65"]
    # Counter and reservation items are no jobs: nothing else is listed.
    assert len(lines) == 6


def test_a_crun_job_is_estimated_from_cruns_own_quote(priced: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVIDER_ENDPOINTS", json.dumps({"crun": f"{priced['sim']}/crun"}))
    monkeypatch.setenv("PROVIDER_PRICES", json.dumps({"crun": {"creditUsd": 0.01}}))
    boto3.client("secretsmanager", endpoint_url=priced["s3"].meta.endpoint_url).put_secret_value(
        SecretId=priced["secret"], SecretString=json.dumps({"crun": "sim-crun-key"})
    )
    clear_caches()
    stem = "incoming/crun/clip"
    priced["s3"].put_object(Bucket=priced["input"], Key=f"{stem}.mp4", Body=priced["clip"])
    priced["s3"].put_object(Bucket=priced["input"], Key=f"{stem}.json", Body=json.dumps({"prompt": "snow", "provider": "crun"}).encode())
    info = head(priced["input"], f"{stem}.json")
    assert info is not None
    handle_object_created(priced["input"], f"{stem}.json")

    job = JobStore().get(job_id_for(priced["input"], f"{stem}.json", info.version_marker))
    assert job is not None and job.state == JobState.SUBMITTED
    assert job.item["costEstimate"] == Decimal("0.6")  # the simulator quotes 60 credits, at a cent each
    assert day_spent(priced) == Decimal("0.6")


@pytest.mark.usefixtures("indexed")
def test_a_job_that_waited_for_its_slot_until_its_deadline_fails_slot_timeout_and_gives_its_reservation_back(
    priced: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = priced["s3"].meta.endpoint_url
    queue_url = boto3.client("sqs", endpoint_url=endpoint).create_queue(QueueName=f"submit-{priced['table_name']}")["QueueUrl"]
    monkeypatch.setenv("PACE_QUEUE_URL", queue_url)
    monkeypatch.setenv("PROVIDER_RATE_LIMITS", json.dumps({"kie": "1/600"}))  # the second job's slot is 10 minutes out
    monkeypatch.setenv("JOB_DEADLINE_SECONDS", "60")
    clear_caches()
    first, second = upload_pair(priced, "incoming/paced/one"), upload_pair(priced, "incoming/paced/two")
    handle_object_created(priced["input"], "incoming/paced/one.json")
    handle_object_created(priced["input"], "incoming/paced/two.json")
    waiting = JobStore().get(second)
    assert waiting is not None and waiting.state == JobState.RECEIVED and waiting.waiting_for.startswith("waiting for a provider slot")
    assert day_spent(priced) == Decimal(str(2 * PRICE_USD))  # both reserved: the waiting one before it took its slot

    monkeypatch.delenv("PACE_QUEUE_URL")  # a function without the pace queue
    clear_caches()
    reconcile(time.time() + 3601)  # past the deadline and the age at which the reconciler looks at RECEIVED jobs

    failed = JobStore().get(second)
    assert failed is not None and failed.state == JobState.FAILED
    assert failed.item["error"]["code"] == "slot_timeout"
    assert "waited for a slot at kie" in failed.item["error"]["message"] and "nothing was sent" in failed.item["error"]["message"]
    assert len(submits(priced["sim"])) == 1
    # The waiting job's reservation went back (it was never sent); the sent one keeps its own
    # (it failed its deadline at the provider, which may charge it).
    assert day_spent(priced) == Decimal(str(PRICE_USD))
    sent = JobStore().get(first)
    assert sent is not None and sent.item["error"]["code"] == "deadline_exceeded"
