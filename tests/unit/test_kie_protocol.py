"""The kie.ai protocol adapter against canned HTTP answers (httpx's mock transport)."""

import json
from collections.abc import Callable

import httpx
import pytest

from aleph_pipeline.errors import JobError
from aleph_pipeline.providers.base import CallbackInvalid, ProviderError, SubmitRequest, VideoInfo
from aleph_pipeline.providers.kie import KieProtocol
from aleph_pipeline.sidecar import parse_sidecar

Handler = Callable[[httpx.Request], httpx.Response]


def make(handler: Handler, provider_id: str = "kie") -> KieProtocol:
    return KieProtocol(
        id=provider_id,
        base_url="https://api.kie.test",
        api_key=lambda: "secret-key",
        http=httpx.Client(transport=httpx.MockTransport(handler)),
        models=("aleph",),
        default_result_hosts=("kie.test",),
    )


def request(document: dict[str, object] | None = None) -> SubmitRequest:
    sidecar, _ = parse_sidecar(json.dumps(document or {"prompt": "snow"}).encode())
    return SubmitRequest("j" * 32, sidecar, "aleph", "https://in.test/v.mp4", ("https://in.test/r.png",), "https://cb.test/x?token=t")


def test_submit_sends_the_documented_body_and_bearer_key() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json={"code": 200, "msg": "success", "data": {"taskId": "task-1"}})

    provider = make(handler)
    document = {"prompt": "snow", "aspectRatio": "9:16", "seed": 7, "watermark": "", "referenceImages": ["r.png"], "providerOptions": {"uploadCn": True}}
    assert provider.submit(request(document)) == "task-1"
    sent = seen[0]
    assert sent.url == "https://api.kie.test/api/v1/aleph/generate"
    assert sent.headers["authorization"] == "Bearer secret-key"
    assert json.loads(sent.content) == {
        "prompt": "snow",
        "videoUrl": "https://in.test/v.mp4",
        "callBackUrl": "https://cb.test/x?token=t",
        "aspectRatio": "9:16",
        "seed": 7,
        "referenceImage": "https://in.test/r.png",
        "waterMark": "",
        "uploadCn": True,
    }


def test_provider_options_may_not_replace_what_the_pipeline_sets() -> None:
    provider = make(lambda req: httpx.Response(500))
    with pytest.raises(JobError, match="callBackUrl"):
        provider.request_body(request({"prompt": "x", "providerOptions": {"callBackUrl": "https://evil.test"}}))


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (200, {"code": 401, "msg": "bad key", "data": None}, "refused"),
        (200, {"code": 402, "msg": "Insufficient credits", "data": None}, "refused"),
        (200, {"code": 422, "msg": "bad", "data": None}, "refused"),
        (200, {"code": 451, "msg": "could not fetch", "data": None}, "refused"),
        (200, {"code": 429, "msg": "slow down", "data": None}, "retryable"),
        (429, {"code": 429, "msg": "slow down", "data": None}, "retryable"),
        (200, {"code": 455, "msg": "maintenance", "data": None}, "retryable"),
        (500, None, "ambiguous"),
        (503, {"code": 500, "msg": "oops"}, "ambiguous"),
        (200, None, "ambiguous"),
        (200, {"code": 200, "msg": "success", "data": {}}, "ambiguous"),
        (400, {"code": 400, "msg": "bad request", "data": None}, "refused"),
    ],
)
def test_submit_classifies_answers(status: int, body: object, kind: str) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=b"not json" if body is None else json.dumps(body).encode())

    with pytest.raises(ProviderError) as caught:
        make(handler).submit(request())
    assert caught.value.kind == kind
    assert "secret-key" not in str(caught.value)


def test_connect_failure_is_retryable_and_read_timeout_is_ambiguous() -> None:
    def refuse(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=req)

    def hang(req: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=req)

    with pytest.raises(ProviderError) as refused:
        make(refuse).submit(request())
    assert refused.value.kind == "retryable"
    with pytest.raises(ProviderError) as hung:
        make(hang).submit(request())
    assert hung.value.kind == "ambiguous"


def parse(body: object) -> object:
    return make(lambda req: httpx.Response(500)).parse_callback(json.dumps(body).encode(), {})


def test_callback_shape_a_success_and_failure() -> None:
    outcome = parse(
        {"code": 200, "msg": "success", "data": {"result_video_url": "https://kie.test/v.mp4", "result_image_url": "https://kie.test/c.png"}, "taskId": "t1"}
    )
    assert outcome.state == "succeeded"  # type: ignore[attr-defined]
    assert outcome.task_id == "t1"  # type: ignore[attr-defined]
    assert outcome.video_urls == ("https://kie.test/v.mp4",)  # type: ignore[attr-defined]
    assert outcome.cover_url == "https://kie.test/c.png"  # type: ignore[attr-defined]
    failed = parse({"code": 400, "msg": "Your prompt was caught by our AI moderator.", "data": None, "taskId": "t1"})
    assert failed.state == "failed"  # type: ignore[attr-defined]
    assert failed.error.message == "Your prompt was caught by our AI moderator."  # type: ignore[attr-defined]
    assert failed.error.code == "generation_failed"  # type: ignore[attr-defined]


def test_callback_shape_b_success_and_failure() -> None:
    body = {
        "code": 200,
        "msg": "All generated successfully.",
        "data": {"task_id": "t2", "video_id": "v", "video_url": "https://kie.test/v.mp4", "image_url": "https://kie.test/c.png"},
    }
    outcome = parse(body)
    assert (outcome.state, outcome.task_id, outcome.video_urls) == ("succeeded", "t2", ("https://kie.test/v.mp4",))  # type: ignore[attr-defined]
    failed = parse({"code": 500, "msg": "server error", "data": {"task_id": "t2"}})
    assert failed.state == "failed"  # type: ignore[attr-defined]
    assert failed.error.retryable  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'{"msg": "no code"}', b'{"code": "200"}', b'{"code": 200, "data": []}', b'{"code": 200, "data": {}}', b'{"code": true}'],
)
def test_malformed_callbacks_are_refused(body: bytes) -> None:
    with pytest.raises(CallbackInvalid):
        make(lambda req: httpx.Response(500)).parse_callback(body, {})


def record(data: dict[str, object]) -> httpx.Response:
    return httpx.Response(200, json={"code": 200, "msg": "success", "data": data})


@pytest.mark.parametrize(
    ("data", "state"),
    [
        ({"taskId": "t", "successFlag": 0, "errorMessage": "", "response": None}, "running"),
        ({"taskId": "t", "successFlag": 0, "errorMessage": None, "response": None}, "running"),
        ({"taskId": "t", "successFlag": 1, "response": {"resultVideoUrl": "https://kie.test/v.mp4", "resultImageUrl": "https://kie.test/c.png"}}, "succeeded"),
        ({"taskId": "t", "successFlag": 0, "errorMessage": "NSFW", "response": None, "completeTime": None}, "failed"),
        ({"taskId": "t", "successFlag": 2, "errorMessage": ""}, "failed"),
        ({"taskId": "t", "successFlag": 1, "expireFlag": 1, "response": {"resultVideoUrl": "https://kie.test/v.mp4"}}, "failed"),
    ],
)
def test_poll_reads_record_info(data: dict[str, object], state: str) -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return record(data)

    outcome = make(handler, "apikley").poll("t")
    assert outcome.state == state
    assert seen[0].url.path == "/api/v1/aleph/record-info"
    assert seen[0].url.params["taskId"] == "t"


@pytest.mark.parametrize(
    ("document", "video", "code"),
    [
        ({"prompt": "x", "numberResults": 2}, None, "unsupported_option"),
        ({"prompt": "x", "frameImages": ["a.png"]}, None, "unsupported_option"),
        ({"prompt": "x", "width": 1280, "height": 720}, None, "unsupported_option"),
        ({"prompt": "x", "outputFormat": "WEBM"}, None, "unsupported_option"),
        ({"prompt": "x", "referenceImages": ["a.png", "b.png"]}, None, "unsupported_option"),
        ({"prompt": "x" * 2049}, None, "invalid_sidecar"),
        ({"prompt": "x", "providerOptions": {"callBackUrl": "https://evil.test"}}, None, "invalid_sidecar"),
        ({"prompt": "x"}, VideoInfo("webm", 100), "video_unsupported"),
        ({"prompt": "x"}, VideoInfo("mp4", 10 * 1024 * 1024 + 1), "video_too_large"),
    ],
)
def test_check_refuses_what_kie_cannot_honour(document: dict[str, object], video: VideoInfo | None, code: str) -> None:
    sidecar, _ = parse_sidecar(json.dumps(document).encode())
    with pytest.raises(JobError) as caught:
        make(lambda req: httpx.Response(500)).check(sidecar, "aleph", video)
    assert caught.value.code == code


def test_check_accepts_what_kie_takes() -> None:
    sidecar, _ = parse_sidecar(
        b'{"prompt": "x", "aspectRatio": "1:1", "seed": 1, "watermark": "w", "referenceImages": ["a.png"], "providerOptions": {"uploadCn": true}}'
    )
    make(lambda req: httpx.Response(500)).check(sidecar, "aleph", VideoInfo("MOV".lower(), 1000))


def signed_provider(key: str | None) -> KieProtocol:
    provider = make(lambda req: httpx.Response(500))
    provider.webhook_key = lambda: key
    return provider


def signature(key: str, task_id: str, timestamp: int) -> str:
    import base64
    import hashlib
    import hmac

    return base64.b64encode(hmac.new(key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()).decode()


def test_signed_callbacks_are_verified_when_a_key_is_configured() -> None:
    import time

    from aleph_pipeline.providers.base import CallbackUnauthorized

    body = json.dumps({"code": 200, "msg": "success", "data": {"result_video_url": "https://kie.test/v.mp4"}, "taskId": "t1"}).encode()
    now = int(time.time())
    good = {"X-Webhook-Timestamp": str(now), "X-Webhook-Signature": signature("hmac-key", "t1", now)}
    assert signed_provider("hmac-key").parse_callback(body, good).state == "succeeded"
    assert signed_provider(None).parse_callback(body, {}).state == "succeeded"  # no key: nothing to check
    refused = [
        {},
        {"X-Webhook-Timestamp": str(now)},
        {"X-Webhook-Timestamp": str(now), "X-Webhook-Signature": signature("other-key", "t1", now)},
        {"X-Webhook-Timestamp": str(now), "X-Webhook-Signature": signature("hmac-key", "t2", now)},
        {"X-Webhook-Timestamp": str(now - 3600), "X-Webhook-Signature": signature("hmac-key", "t1", now - 3600)},
        {"X-Webhook-Timestamp": "yesterday", "X-Webhook-Signature": signature("hmac-key", "t1", now)},
    ]
    for headers in refused:
        with pytest.raises(CallbackUnauthorized):
            signed_provider("hmac-key").parse_callback(body, headers)


def test_the_read_timeout_of_provider_calls_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from aleph_pipeline.config import get_settings
    from aleph_pipeline.providers import get_provider

    def configured(value: str | None) -> httpx.Timeout:
        if value is None:
            monkeypatch.delenv("PROVIDER_READ_TIMEOUT_SECONDS", raising=False)
        else:
            monkeypatch.setenv("PROVIDER_READ_TIMEOUT_SECONDS", value)
        get_settings.cache_clear()
        get_provider.cache_clear()
        timeout: httpx.Timeout = get_provider("kie").http.timeout
        return timeout

    try:
        assert (configured(None).read, configured(None).connect) == (30.0, 5.0)
        assert configured("2.5").read == 2.5
    finally:
        get_settings.cache_clear()
        get_provider.cache_clear()


# ---- expired result links, the User-Agent, the result hosts -----------------------------------


def download_url(answers: dict[str, httpx.Response], seen: list[httpx.Request]) -> Handler:
    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return answers[req.url.path]

    return handler


def test_refresh_result_url_asks_download_url_for_a_fresh_link() -> None:
    seen: list[httpx.Request] = []
    fresh = httpx.Response(200, json={"code": 200, "msg": "success", "data": "https://tempfile.aiquickdraw.com/fresh.mp4"})
    adapter = make(download_url({"/api/v1/common/download-url": fresh}, seen))
    assert adapter.refresh_result_url("https://tempfile.aiquickdraw.com/old.mp4") == "https://tempfile.aiquickdraw.com/fresh.mp4"
    assert (seen[0].method, json.loads(seen[0].content)) == ("POST", {"url": "https://tempfile.aiquickdraw.com/old.mp4"})
    assert seen[0].headers["authorization"] == "Bearer secret-key"


def test_refresh_of_a_url_kie_did_not_make_is_none_and_a_failure_for_now_is_transient() -> None:
    from aleph_pipeline.errors import TransientError

    refused = httpx.Response(200, json={"code": 422, "msg": "not a kie url", "data": None})
    assert make(download_url({"/api/v1/common/download-url": refused}, [])).refresh_result_url("https://other.test/a.mp4") is None
    busy = httpx.Response(500, json={"code": 500, "msg": "busy", "data": None})
    with pytest.raises(TransientError):
        make(download_url({"/api/v1/common/download-url": busy}, [])).refresh_result_url("https://tempfile.aiquickdraw.com/a.mp4")


def test_a_poll_that_reports_an_expired_result_returns_fresh_links() -> None:
    seen: list[httpx.Request] = []
    data = {
        "taskId": "t",
        "successFlag": 1,
        "expireFlag": 1,
        "response": {"resultVideoUrl": "https://kie.test/v.mp4", "resultImageUrl": "https://kie.test/c.png"},
    }

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        if req.url.path == "/api/v1/common/download-url":
            return httpx.Response(200, json={"code": 200, "msg": "success", "data": json.loads(req.content)["url"] + "?fresh=1"})
        return record(data)

    outcome = make(handler).poll("t")
    assert (outcome.state, outcome.video_urls, outcome.cover_url) == ("succeeded", ("https://kie.test/v.mp4?fresh=1",), "https://kie.test/c.png?fresh=1")


def test_provider_requests_carry_the_product_user_agent_on_the_shared_client() -> None:
    import tomllib
    from pathlib import Path

    from aleph_pipeline.providers import USER_AGENT, _http_client

    version = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["version"]
    assert version == USER_AGENT.removeprefix("aleph-pipeline/")
    assert _http_client(30.0).headers["user-agent"] == USER_AGENT


@pytest.mark.parametrize(
    "host", ["tempfile.aiquickdraw.com", "file.aiquickdraw.com", "tempfileb.aiquickdraw.com", "static.aiquickdraw.com", "tempfile.redpandaai.co"]
)
@pytest.mark.parametrize("provider_id", ["kie", "apikley"])
def test_kies_result_hosts_are_allowed(provider_id: str, host: str) -> None:
    from aleph_pipeline.providers import _REGISTRY
    from aleph_pipeline.storage import check_url

    check_url(f"https://{host}/r/video.mp4", _REGISTRY[provider_id][3], allow_http=False)
