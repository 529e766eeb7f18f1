"""The https rule of callback result URLs, with the production settings (which the local stack
relaxes to let the simulator serve results over http from 127.0.0.1): an ``http://`` URL on the
provider's own host is refused and changes nothing. The rest of the forged-callback corpus runs
end to end in ``tests/e2e/test_forged_callbacks.py``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aleph_pipeline.callbacks import receive_callback
from aleph_pipeline.config import get_settings
from aleph_pipeline.jobs import hash_token
from aleph_pipeline.providers import get_provider
from aleph_pipeline.storage import check_url

JOB_ID = "5" * 32
TOKEN = "a-per-job-token-of-the-usual-length-0123456789"
TASK_ID = "kie-task-1"


@pytest.fixture
def waiting_job(aws: dict[str, Any]) -> dict[str, Any]:
    item = {
        "jobId": JOB_ID,
        "status": "SUBMITTED",
        "provider": "kie",
        "model": "aleph",
        "providerTaskId": TASK_ID,
        "tokenHash": hash_token(TOKEN),
        "outputPrefix": f"shot/{JOB_ID}/",
        "history": [{"state": "RECEIVED", "at": "2026-01-01T00:00:00.000Z"}, {"state": "SUBMITTED", "at": "2026-01-01T00:00:01.000Z"}],
        "updatedAt": "2026-01-01T00:00:01.000Z",
    }
    aws["table"].put_item(Item=item)
    return item


@pytest.mark.parametrize("host", ["tempfile.aiquickdraw.com", "kie.ai"])
def test_http_result_url_on_the_providers_own_host_is_refused(aws: dict[str, Any], waiting_job: dict[str, Any], host: str) -> None:
    settings = get_settings()
    assert settings.allow_http_result_urls is False and settings.result_hosts == {}  # production defaults
    http_url = f"http://{host}/v/result.mp4"
    body = json.dumps({"code": 200, "msg": "success", "data": {"result_video_url": http_url, "result_image_url": None}, "taskId": TASK_ID}).encode()

    answer = receive_callback("kie", JOB_ID, TOKEN, body, {})

    assert answer.status == 400
    assert "allowed hosts" in answer.body["message"]
    assert aws["table"].get_item(Key={"jobId": JOB_ID}, ConsistentRead=True)["Item"] == waiting_job
    assert aws["s3"].list_objects_v2(Bucket=aws["output"]).get("KeyCount", 0) == 0
    # The same URL over https passes the same check: the scheme alone was refused.
    check_url(http_url.replace("http://", "https://"), get_provider("kie").allowed_result_hosts, settings.allow_http_result_urls)
