"""GET /jobs/{jobId} on the local stack's API: 200 with state, timings and working links; 404; 422;
and a schemathesis run of the generated OpenAPI document that finds no server error.

The route is AWS_IAM, on AWS and locally: every request is SigV4-signed with the credentials in
stack.json (service execute-api); an unsigned one gets API Gateway's 403."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from local.apigw import SigV4HttpxAuth, sigv4_headers
from tools.gen_docs import OPENAPI

from .conftest import Stack
from .test_pipeline import run_pair

pytestmark = pytest.mark.e2e

schema = schemathesis.openapi.from_path(OPENAPI)


def signing(info: dict[str, Any]) -> SigV4HttpxAuth:
    """httpx ``auth=`` with the stack's own credentials, like a caller with execute-api:Invoke."""
    return SigV4HttpxAuth(info["aws_access_key_id"], info["aws_secret_access_key"], region=info["region"])


def sign_prepared(info: dict[str, Any]) -> Any:
    """The same for requests (schemathesis' client): signs the prepared request as it will be sent."""

    def sign(request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body.encode() if isinstance(request.body, str) else request.body or b""
        given = {name: str(request.headers[name]) for name in ("Content-Type",) if name in request.headers}
        keys = {"access_key": info["aws_access_key_id"], "secret_key": info["aws_secret_access_key"], "region": info["region"]}
        request.headers.update(sigv4_headers(str(request.method), str(request.url), body, given, **keys))
        return request

    return sign


def test_a_completed_job_answers_200_with_timings_and_links_that_work(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    key = run_pair(stack, f"incoming/status/ok-{unique}", f"ok {unique}")
    job = stack.wait_for_job(key)
    response = stack.api.get(f"/jobs/{job['jobId']}", auth=signing(stack.info))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert (body["jobId"], body["state"], body["provider"], body["model"]) == (job["jobId"], "COMPLETED", "kie", "aleph")
    assert body["sidecarKey"] == key and body["inputKey"] == f"incoming/status/ok-{unique}.mp4"
    assert [entry["state"] for entry in body["history"]] == ["RECEIVED", "SUBMITTED", "SUCCEEDED", "COMPLETED"]
    timings = body["timings"]
    assert timings["createdAt"] == job["createdAt"] and timings["finishedAt"] == job["updatedAt"]
    created, finished = (datetime.fromisoformat(timings[k].replace("Z", "+00:00")) for k in ("createdAt", "finishedAt"))
    assert timings["elapsedSeconds"] == pytest.approx((finished - created).total_seconds())
    assert body["error"] is None
    prefix = f"status/ok-{unique}/{job['jobId']}/"
    links = {link["key"]: link for link in body["outputs"]}
    assert set(links) == {prefix + "result.mp4", prefix + "cover.png", prefix + "job.json"}
    # The presigned links download the outputs themselves.
    assert httpx.get(links[prefix + "result.mp4"]["url"], timeout=30).content == stack.output_bytes(prefix + "result.mp4")
    assert links[prefix + "result.mp4"]["size"] == len(stack.output_bytes(prefix + "result.mp4"))
    assert httpx.get(links[prefix + "job.json"]["url"], timeout=30).json()["jobId"] == job["jobId"]


def test_a_failed_job_answers_its_error_and_a_link_to_error_json(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    stack.put(f"incoming/status/bad-{unique}.mp4", stack.clip)
    stack.put_sidecar(f"incoming/status/bad-{unique}.json", {"prompt": "p", "colour": "red"})
    job = stack.wait_for_job(f"incoming/status/bad-{unique}.json")
    body = stack.api.get(f"/jobs/{job['jobId']}", auth=signing(stack.info)).json()
    assert body["state"] == "FAILED"
    assert body["error"]["code"] == "invalid_sidecar" and "unknown field `colour`" in body["error"]["message"]
    assert body["error"]["hint"]
    [link] = body["outputs"]
    assert link["key"] == f"status/bad-{unique}/{job['jobId']}/error.json"
    stack.output_json(link["key"])  # written just after the FAILED state
    assert httpx.get(link["url"], timeout=30).json()["code"] == "invalid_sidecar"


def test_unknown_and_malformed_job_ids(stack: Stack) -> None:
    unknown = stack.api.get(f"/jobs/{'0' * 32}", auth=signing(stack.info))
    assert unknown.status_code == 404
    assert unknown.json() == {"statusCode": 404, "message": f"no job {'0' * 32}"}
    malformed = stack.api.get("/jobs/not-a-job", auth=signing(stack.info))
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["loc"] == ["path", "jobId"]


def test_an_unsigned_or_badly_signed_request_is_refused_like_api_gateway(stack: Stack) -> None:
    job = f"/jobs/{'0' * 32}"
    unsigned = stack.api.get(job)
    assert (unsigned.status_code, unsigned.json()) == (403, {"message": "Forbidden"})
    wrong = stack.api.get(job, auth=SigV4HttpxAuth(stack.info["aws_access_key_id"], "not-the-secret", region=stack.info["region"]))
    assert wrong.status_code == 403 and wrong.headers["x-amzn-errortype"] == "InvalidSignatureException"
    assert wrong.json()["message"].startswith("The request signature we calculated does not match the signature you provided.")


@schema.parametrize()
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_openapi_document_finds_no_server_error(case: schemathesis.Case, stack: Stack) -> None:
    response = case.call_and_validate(base_url=stack.info["api_url"], checks=[not_a_server_error], timeout=30, auth=sign_prepared(stack.info))
    assert response.status_code != 403, response.text  # signed: the request reached the function
