"""The HTTP API emulator over real HTTP on 127.0.0.1: an AWS_IAM route takes only SigV4 requests
signed with the local credentials, and answers the rest 403 the way API Gateway does; an open
route stays open."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import botocore.auth
import httpx
import pytest
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from local.apigw import HttpApiEmulator, Route, SigV4HttpxAuth, SigV4Verifier, sigv4_headers
from local.lambda_runtime import LambdaFunction

MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
)

ECHO = """
import json, pathlib, uuid


def lambda_handler(event, context):
    pathlib.Path({calls!r}, uuid.uuid4().hex).write_text(event["rawPath"])
    return {{"statusCode": 200, "body": json.dumps({{"path": event["rawPath"], "query": event["rawQueryString"]}})}}
"""


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpApiEmulator]:
    root = tmp_path_factory.mktemp("sigv4")
    functions = {}
    for name in ("status", "callback"):
        (root / f"{name}-calls").mkdir()
        path = root / f"{name}.py"
        path.write_text(textwrap.dedent(ECHO.format(calls=str(root / f"{name}-calls"))))
        functions[name] = LambdaFunction(name, path)
    routes = [Route("GET", "/jobs/{jobId}", "status", "AWS_IAM"), Route("POST", "/callbacks/{provider}/{jobId}", "callback")]
    emulator = HttpApiEmulator(routes, None)
    emulator.functions = functions
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def client(api: HttpApiEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=10) as opened:
        yield opened


def signed(api: HttpApiEmulator, path: str, **keys: str) -> dict[str, str]:
    return sigv4_headers("GET", f"{api.url}{path}", **keys)


def refusal(response: httpx.Response) -> tuple[int, str, str | None]:
    return response.status_code, response.json()["message"], response.headers.get("x-amzn-errortype")


def test_a_good_signature_reaches_the_function(client: httpx.Client) -> None:
    response = client.get("/jobs/abc", params={"verbose": "1"}, auth=SigV4HttpxAuth())
    assert response.status_code == 200
    assert response.json() == {"path": "/jobs/abc", "query": "verbose=1"}


def test_an_unsigned_request_is_forbidden(client: httpx.Client) -> None:
    response = client.get("/jobs/abc")
    assert (response.status_code, response.json(), response.headers.get("x-amzn-errortype")) == (403, {"message": "Forbidden"}, None)


def test_a_wrong_secret_does_not_match(api: HttpApiEmulator, client: httpx.Client) -> None:
    response = client.get("/jobs/abc", headers=signed(api, "/jobs/abc", secret_key="not-the-secret"))
    assert refusal(response) == (403, MISMATCH, "InvalidSignatureException")


def test_an_unknown_access_key_is_an_invalid_token(api: HttpApiEmulator, client: httpx.Client) -> None:
    response = client.get("/jobs/abc", headers=signed(api, "/jobs/abc", access_key="AKIAOTHERKEY"))
    assert refusal(response) == (403, "The security token included in the request is invalid.", "UnrecognizedClientException")


@pytest.mark.parametrize("sent", ["/jobs/abd", "/jobs/abc?verbose=2", "/jobs/abc?verbose=1&extra="])
def test_a_path_or_query_changed_after_signing_does_not_match(api: HttpApiEmulator, client: httpx.Client, sent: str) -> None:
    headers = signed(api, "/jobs/abc?verbose=1")
    assert client.get("/jobs/abc?verbose=1", headers=headers).status_code == 200  # the request as signed passes
    assert refusal(client.get(sent, headers=headers)) == (403, MISMATCH, "InvalidSignatureException")


def test_a_signature_over_five_minutes_old_has_expired(api: HttpApiEmulator, client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now - timedelta(minutes=4))
    assert client.get("/jobs/abc", headers=signed(api, "/jobs/abc")).status_code == 200  # clock skew API Gateway allows
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now - timedelta(minutes=6))
    status, message, error_type = refusal(client.get("/jobs/abc", headers=signed(api, "/jobs/abc")))
    assert (status, error_type) == (403, "InvalidSignatureException")
    assert message.startswith(f"Signature expired: {(now - timedelta(minutes=6)).strftime('%Y%m%dT%H%M%SZ')} is now earlier than ")
    assert message.endswith(" - 5 min.)")


def test_a_signature_for_another_region_or_service_is_refused(api: HttpApiEmulator, client: httpx.Client) -> None:
    other_region = client.get("/jobs/abc", headers=signed(api, "/jobs/abc", region="eu-west-1"))
    assert refusal(other_region) == (403, "Credential should be scoped to a valid region, not 'eu-west-1'. ", "InvalidSignatureException")
    other_service = client.get("/jobs/abc", headers=signed(api, "/jobs/abc", service="lambda"))
    assert refusal(other_service) == (403, "Credential should be scoped to correct service: 'execute-api'. ", "InvalidSignatureException")


def test_a_presigned_url_is_accepted_until_it_expires(api: HttpApiEmulator, client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    def presign(expires: int) -> str:
        request = AWSRequest(method="GET", url=f"{api.url}/jobs/abc?verbose=1")
        SigV4QueryAuth(Credentials("testing", "testing"), "execute-api", "us-east-1", expires=expires).add_auth(request)
        return str(request.url)

    url = presign(60)
    assert httpx.get(url, timeout=10).status_code == 200
    assert refusal(httpx.get(url.replace("verbose=1", "verbose=2"), timeout=10)) == (403, MISMATCH, "InvalidSignatureException")
    now = datetime.now(UTC).replace(tzinfo=None)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now - timedelta(seconds=120))
    status, message, _ = refusal(httpx.get(presign(60), timeout=10))
    assert status == 403 and message.startswith("Signature expired: ")


def test_the_open_callback_route_needs_no_signature(client: httpx.Client) -> None:
    response = client.post("/callbacks/kie/abc", content=json.dumps({"code": 200}), headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert response.json()["path"] == "/callbacks/kie/abc"


def test_a_refused_request_never_invokes_the_function(api: HttpApiEmulator, client: httpx.Client) -> None:
    calls = Path(api.functions["status"].handler_file).parent / "status-calls"
    client.get("/jobs/refused")
    client.get("/jobs/refused", headers=signed(api, "/jobs/refused", secret_key="nope"))
    assert "/jobs/refused" not in {path.read_text() for path in calls.iterdir()}
    assert client.get("/jobs/refused", auth=SigV4HttpxAuth()).status_code == 200
    assert "/jobs/refused" in {path.read_text() for path in calls.iterdir()}


def test_signing_covers_the_body_of_a_post() -> None:
    """The signature covers the body: the same headers over another body do not match."""
    verifier = SigV4Verifier()
    headers = {k.lower(): v for k, v in sigv4_headers("POST", "http://127.0.0.1:1/jobs/x", b'{"a":1}', {"content-type": "application/json"}).items()}
    assert verifier.check("POST", "/jobs/x", headers, b'{"a":1}') is None
    refused = verifier.check("POST", "/jobs/x", headers, b'{"a":2}')
    assert refused is not None and refused.message == MISMATCH
