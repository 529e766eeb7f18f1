"""`aleph list --sidecar`, `aleph status` and `aleph submit --prompts` against jobs made by intake
(moto server over real HTTP, a kie-protocol server that counts the tasks it makes)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from aleph_cli import doctor
from aleph_cli.main import main
from aleph_cli.stack import discover
from aleph_pipeline.intake import handle_object_created
from aleph_pipeline.jobs import JobStore

from .test_cli_stack import create_stack
from .test_defaults_and_variants import team  # noqa: F401  (the fixture)
from .test_promise_under_faults import MP4, FakeKie, kie  # noqa: F401  (kie: the fixture team builds on)
from .test_reconcile import indexed  # noqa: F401  (the fixture kie builds on)

PRICE_USD = 0.5


@pytest.fixture
def priced(team: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:  # noqa: F811
    """kie at a price per job (so intake records an estimate), and a local stack.json for the CLI."""
    from .conftest import clear_caches

    monkeypatch.setenv("PROVIDER_PRICES", json.dumps({"kie": {"perJob": PRICE_USD}}))
    clear_caches()
    info = {"input_bucket": team["input"], "input_prefix": "incoming/", "output_bucket": team["output"], "jobs_table": team["table_name"]}
    info.update(s3_endpoint=os.environ["AWS_ENDPOINT_URL"], aws_access_key_id="test", aws_secret_access_key="test")
    (tmp_path / "stack.json").write_text(json.dumps(info))
    return {**team, "local": str(tmp_path)}


def aleph(env: dict[str, Any], capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["--local", env["local"], *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def intake(env: dict[str, Any], capsys: pytest.CaptureFixture[str], sidecar_key: str) -> None:
    handle_object_created(env["input"], sidecar_key)
    capsys.readouterr()  # the handlers' log lines are not the CLI's output


def test_submit_prompts_prints_every_job_and_list_sidecar_shows_each_variant_in_prompt_order(
    priced: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = tmp_path / "shot.mp4"
    video.write_bytes(MP4)
    code, out = aleph(priced, capsys, "submit", str(video), "--prompts", "snow", "rain", "--provider", "kie", "--folder", priced["name"])
    assert code == 0, out
    job_ids = re.findall(r"^job ([0-9a-f]{32})$", out, re.MULTILINE)
    assert len(job_ids) == 2
    sidecar_key = f"{priced['folder']}/shot.json"
    intake(priced, capsys, sidecar_key)
    assert sorted(task["request"]["prompt"] for task in FakeKie.tasks) == ["rain", "snow"]
    # The provider reports a real cost for the first variant only.
    priced["table"].update_item(Key={"jobId": job_ids[0]}, UpdateExpression="SET cost = :c", ExpressionAttributeValues={":c": 1})

    code, out = aleph(priced, capsys, "list", "--sidecar", f"{priced['name']}/shot.json")  # relative to the input prefix
    assert code == 0, out
    lines = out.splitlines()
    assert len(lines) == 3, out
    for index, (line, job_id, prompt) in enumerate(zip(lines[:2], job_ids, ("snow", "rain"), strict=True)):
        manifest = f"s3://{priced['output']}/{priced['name']}/shot/{job_id}/job.json"
        fields = line.split()
        assert fields[:4] == [job_id, "SUBMITTED", str(index), prompt], line
        assert fields[-1] == manifest
    assert "1.00 USD" in lines[0] and "~" not in lines[0]
    assert f"~{PRICE_USD:.2f} USD" in lines[1]
    assert lines[2].startswith("~ an estimate made before sending")
    code, out = aleph(priced, capsys, "status", job_ids[1])
    assert re.search(r"^variant\s+1 of 2: rain$", out, re.MULTILINE), out

    code, out = aleph(priced, capsys, "list", "--sidecar", "incoming/nobody/none.json")
    assert (code, out) == (0, f"no jobs from s3://{priced['input']}/incoming/nobody/none.json\n")


def test_status_shows_the_estimate_the_cost_and_every_provider_tried(priced: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(MP4)
    code, out = aleph(priced, capsys, "submit", str(video), "--prompt", "fog", "--provider", "kie", "--folder", priced["name"])
    assert code == 0, out
    (job_id,) = re.findall(r"^job ([0-9a-f]{32})$", out, re.MULTILINE)
    intake(priced, capsys, f"{priced['folder']}/clip.json")
    assert JobStore().get(job_id) is not None
    code, out = aleph(priced, capsys, "status", job_id)
    assert code == 0, out
    assert re.search(rf"^estimate\s+{PRICE_USD:.2f} USD \(before sending\)$", out, re.MULTILINE), out
    assert not re.search(r"^(cost|tried)\s", out, re.MULTILINE)

    tried = {"provider": "apikley", "model": "aleph", "reason": "under maintenance", "code": "provider_unavailable", "at": "2026-12-01T10:00:00.000Z"}
    priced["table"].update_item(
        Key={"jobId": job_id}, UpdateExpression="SET cost = :c, providersTried = :t", ExpressionAttributeValues={":c": 1, ":t": [tried]}
    )
    code, out = aleph(priced, capsys, "status", job_id)
    assert re.search(r"^cost\s+1.00 USD$", out, re.MULTILINE), out
    assert re.search(r"^tried\s+apikley / aleph: under maintenance \(provider_unavailable\) @10:00:00.000$", out, re.MULTILINE), out


def test_doctor_reads_the_provider_chain_of_a_deployed_stack(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = {"InputBucketName": "i", "InputPrefix": "incoming/", "OutputBucketName": "o", "JobsTableName": "t"}
    outputs.update(ProviderKeysSecretArn="arn:keys", CallbackApiUrl="http://127.0.0.1:9")
    create_stack(moto_server, "aleph-chain", outputs, {"ProviderChain": "kie,runware", "DefaultProvider": "apikley"})
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    target = doctor.deployed_target(discover("aleph-chain", region="us-east-1"))
    assert (target.default_provider, target.provider_chain) == ("apikley", ("kie", "runware"))
