"""``aleph dashboard``: the deployed stack's DashboardUrl output; on the local stack, why there is none."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from aleph_cli.main import main

URL = "https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1#dashboards/dashboard/demo-operations"


def deploy(moto_server: str, name: str, outputs: dict[str, str]) -> None:
    """A stack in moto's CloudFormation with these outputs (one topic: a stack needs a resource)."""
    template = {
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    boto3.client("cloudformation", endpoint_url=moto_server).create_stack(StackName=name, TemplateBody=json.dumps(template))


@pytest.fixture
def deployed(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    return moto_server


# The outputs every aleph command reads to find a deployed stack.
BASE_OUTPUTS = {"InputBucketName": "in", "InputPrefix": "incoming/", "OutputBucketName": "out", "JobsTableName": "jobs"}


def test_it_prints_the_deployed_stack_s_dashboard_url(deployed: str, capsys: pytest.CaptureFixture[str]) -> None:
    deploy(deployed, "with-dashboard", {**BASE_OUTPUTS, "DashboardUrl": URL})
    assert main(["--stack", "with-dashboard", "--region", "us-east-1", "dashboard"]) == 0
    assert capsys.readouterr().out == URL + "\n"


def test_a_stack_deployed_before_the_dashboard_is_told_to_deploy_again(deployed: str, capsys: pytest.CaptureFixture[str]) -> None:
    deploy(deployed, "before-dashboard", BASE_OUTPUTS)
    assert main(["--stack", "before-dashboard", "--region", "us-east-1", "dashboard"]) == 1
    err = capsys.readouterr().err
    assert "stack before-dashboard has no output DashboardUrl" in err and "sam deploy" in err


def test_the_local_stack_says_it_has_no_dashboard_and_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "stack.json").write_text(
        json.dumps({"input_bucket": "i", "input_prefix": "incoming/", "output_bucket": "o", "jobs_table": "t", "s3_endpoint": "http://127.0.0.1:9"})
    )
    assert main(["--local", str(tmp_path), "dashboard"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "has no dashboard: CloudWatch dashboards exist only in a deployed stack" in captured.err
    assert "aleph --stack NAME dashboard" in captured.err
