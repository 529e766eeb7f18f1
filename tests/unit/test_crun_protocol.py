"""The crun.ai protocol adapter against canned HTTP answers (httpx's mock transport)."""

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from aleph_pipeline.errors import JobError
from aleph_pipeline.providers import _REGISTRY
from aleph_pipeline.providers.base import CallbackInvalid, Outcome, ProviderError, SubmitRequest, VideoInfo
from aleph_pipeline.providers.crun import INPUT_FIELDS, CrunProtocol, crun_input
from aleph_pipeline.sidecar import parse_sidecar

Handler = Callable[[httpx.Request], httpx.Response]
MODEL = "runway/gen-4-aleph"


# A JSON schema of the shape crun's `Models/<model>` answer carries (its `input_schema`).
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string"},
        "video_url": {"type": "string"},
        "img_urls": {"type": "array", "items": {"type": "string"}},
        "aspect_ratio": {"type": "string", "enum": ["16:9", "9:16", "1:1"]},
        "seed": {"type": "integer"},
    },
    "required": ["prompt", "video_url"],
}
AFFORDABLE = {"estimated_credits": 60, "balance": 1000, "affordable": True}


def make(handler: Handler, schema: dict[str, Any] | None = None, estimate: dict[str, Any] | None = None) -> CrunProtocol:
    """An adapter whose model schema and estimate calls get ``schema`` and ``estimate``; every other call goes to ``handler``."""

    def answer(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/api/v1/client/job/Models/runway/gen-4-aleph":
            return httpx.Response(200, json={"code": 200, "message": "success", "data": {"model": MODEL, "input_schema": schema or SCHEMA}})
        if req.url.path == "/api/v1/client/job/EstimateTask":
            return httpx.Response(200, json={"code": 200, "message": "success", "data": estimate or AFFORDABLE})
        return handler(req)

    return CrunProtocol(
        id="crun",
        base_url="https://api.crun.test",
        api_key=lambda: "secret-key",
        http=httpx.Client(transport=httpx.MockTransport(answer)),
        models=(MODEL,),
        default_result_hosts=("crun.test",),
    )


def idle() -> CrunProtocol:
    return make(lambda req: httpx.Response(500))


def request(document: dict[str, object] | None = None, refs: tuple[str, ...] = ()) -> SubmitRequest:
    sidecar, _ = parse_sidecar(json.dumps(document or {"prompt": "snow"}).encode())
    return SubmitRequest("j" * 32, sidecar, MODEL, "https://in.test/v.mp4", refs, "https://cb.test/x?token=t")


def test_registered_with_its_base_url_model_and_hosts() -> None:
    base_url, constructor, models, hosts = _REGISTRY["crun"]
    assert (base_url, constructor, models) == ("https://api.crun.ai", CrunProtocol, (MODEL,))
    assert "crun.ai" in hosts


def test_submit_sends_model_callback_and_input_with_the_api_key_header() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json={"code": 200, "message": "success", "data": {"task_id": "task_1"}})

    document = {"prompt": "snow", "aspectRatio": "9:16", "seed": 7, "referenceImages": ["r.png"]}
    assert make(handler).submit(request(document, ("https://in.test/r.png",))) == "task_1"
    sent = seen[0]
    assert (sent.method, str(sent.url)) == ("POST", "https://api.crun.test/api/v1/client/job/CreateTask")
    assert sent.headers["x-api-key"] == "secret-key"
    assert "authorization" not in sent.headers
    assert json.loads(sent.content) == {
        "model": MODEL,
        "callback_url": "https://cb.test/x?token=t",
        "input": {"prompt": "snow", "video_url": "https://in.test/v.mp4", "img_urls": ["https://in.test/r.png"], "aspect_ratio": "9:16", "seed": 7},
    }


def test_input_leaves_out_what_the_sidecar_does_not_set() -> None:
    assert crun_input(request()) == {"prompt": "snow", "video_url": "https://in.test/v.mp4"}
    assert set(INPUT_FIELDS.values()) == {"prompt", "video_url", "img_urls", "aspect_ratio", "seed"}


def test_provider_options_add_and_override_input_fields() -> None:
    options = {"duration": 5, "aspect_ratio": "1:1", "img_urls": ["https://x.test/a.png"]}
    body = idle().request_body(request({"prompt": "x", "aspectRatio": "16:9", "providerOptions": options}))
    assert body["input"]["duration"] == 5
    assert body["input"]["aspect_ratio"] == "1:1"
    assert body["input"]["img_urls"] == ["https://x.test/a.png"]
    assert body["model"] == MODEL  # options never reach the top level


@pytest.mark.parametrize("field", ["callback_url", "model", "video_url", "prompt"])
def test_provider_options_may_not_replace_what_the_pipeline_sets(field: str) -> None:
    sidecar, _ = parse_sidecar(json.dumps({"prompt": "x", "providerOptions": {field: "https://evil.test"}}).encode())
    with pytest.raises(JobError, match=field) as caught:
        idle().check(sidecar, MODEL, None)  # refused at intake, before any submission
    assert caught.value.code == "invalid_sidecar"
    with pytest.raises(JobError, match=field):
        idle().request_body(request({"prompt": "x", "providerOptions": {field: "https://evil.test"}}))


@pytest.mark.parametrize(
    ("status", "body", "kind", "code"),
    [
        (200, {"code": 401, "message": "Unauthorized", "data": None}, "refused", "401"),
        (401, {"code": 401, "message": "Unauthorized", "data": None}, "refused", "401"),
        (200, {"code": 402, "message": "Insufficient Credits", "data": None}, "refused", "402"),
        (402, None, "refused", "402"),
        (200, {"code": 422, "message": "Missing Params or Type Error", "errors": ["input.prompt is required"]}, "refused", "422"),
        (200, {"code": 455, "message": "Service Unavailable", "data": None}, "retryable", "455"),
        (200, {"code": 505, "message": "Feature Disabled", "data": None}, "refused", "505"),
        (200, {"code": 501, "message": "Generation Failed", "data": None}, "refused", "501"),
        (200, {"code": 404, "message": "Not Found", "data": None}, "refused", "404"),
        (429, {"code": 429, "message": "Rate Limited", "data": None}, "retryable", "429"),
        (200, {"code": 429, "message": "Rate Limited", "data": None}, "retryable", "429"),
        (500, {"code": 500, "message": "Server Error", "data": None}, "ambiguous", "500"),
        (502, None, "ambiguous", "502"),
        (200, None, "ambiguous", "unreadable"),
        (200, {"code": 200, "message": "success", "data": {}}, "ambiguous", "no_task_id"),
    ],
)
def test_submit_classifies_crun_codes(status: int, body: object, kind: str, code: str) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=b"<html>bad gateway</html>" if body is None else json.dumps(body).encode())

    with pytest.raises(ProviderError) as caught:
        make(handler).submit(request())
    assert (caught.value.kind, caught.value.code) == (kind, code)
    assert "secret-key" not in str(caught.value)


def test_refusal_carries_crun_message_and_validation_errors() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"code": 422, "message": "Missing Params or Type Error", "errors": ["input.video_url is required"]})

    with pytest.raises(ProviderError) as caught:
        make(handler).submit(request())
    error = caught.value.to_job_error()
    assert error.code == "provider_rejected"
    assert error.message == "crun: Missing Params or Type Error: input.video_url is required"
    assert not error.retryable


def test_kie_style_msg_is_not_read_as_crun_message() -> None:
    with pytest.raises(ProviderError) as caught:
        make(lambda req: httpx.Response(200, json={"code": 402, "msg": "kie wording"})).submit(request())
    assert "kie wording" not in caught.value.message
    assert caught.value.message == "crun: HTTP 200"


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


def task(status: str, result: object = None, task_id: str = "task_1") -> dict[str, object]:
    return {
        "task_id": task_id,
        "provider": "Runway",
        "model_version": "gen-4-aleph",
        "status": status,
        "param": {"model": MODEL, "callback_url": "https://cb.test/x", "input": {"prompt": "x"}},
        "create_at": 1768900378,
        "result": result,
        "duration_s": None,
        "complete_at": None,
        "source": "api",
    }


SUCCESS = {"code": 200, "message": "success", "media_urls": ["https://cdn.crun.test/a.mp4", "https://cdn.crun.test/b.mp4"], "usage": {}}
FAILED = {"code": 501, "message": "Generation Failed: the prompt was refused", "media_urls": []}


def parse(document: object) -> Outcome:
    return idle().parse_callback(json.dumps(document).encode(), {})


@pytest.mark.parametrize("wrapped", [False, True])
def test_callback_success_bare_or_wrapped(wrapped: bool) -> None:
    data = task("success", SUCCESS)
    outcome = parse({"code": 200, "message": "success", "data": data} if wrapped else data)
    assert (outcome.state, outcome.task_id) == ("succeeded", "task_1")
    assert outcome.video_urls == ("https://cdn.crun.test/a.mp4", "https://cdn.crun.test/b.mp4")


@pytest.mark.parametrize("wrapped", [False, True])
def test_callback_failure_bare_or_wrapped_carries_crun_message(wrapped: bool) -> None:
    data = task("failed", FAILED)
    outcome = parse({"code": 200, "message": "success", "data": data} if wrapped else data)
    assert outcome.state == "failed"
    assert outcome.error is not None
    assert (outcome.error.code, outcome.error.stage, outcome.error.retryable) == ("generation_failed", "provider", False)
    assert outcome.error.message == "Generation Failed: the prompt was refused"
    assert outcome.error.details == {"providerCode": 501}


def test_failed_task_with_a_server_error_is_marked_retryable() -> None:
    outcome = parse(task("failed", {"code": 500, "message": "Server Error"}))
    assert outcome.error is not None and outcome.error.retryable


def test_wrapped_error_without_data_fails_with_its_message() -> None:
    outcome = parse({"code": 501, "message": "Generation Failed", "data": None})
    assert outcome.state == "failed"
    assert outcome.error is not None and outcome.error.message == "Generation Failed"


@pytest.mark.parametrize("status", ["pending", "running"])
def test_callback_in_progress_is_running(status: str) -> None:
    assert parse(task(status)).state == "running"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"message": "no code"}',
        b'{"code": 200, "message": "success", "data": null}',
        b'{"code": 200, "data": []}',
        json.dumps(task("success", {"code": 200, "media_urls": []})).encode(),
        json.dumps(task("success", None)).encode(),
        json.dumps(task("success", {"media_urls": [7]})).encode(),
        json.dumps(task("done", None)).encode(),
        json.dumps({**task("success", SUCCESS), "task_id": 5}).encode(),
        json.dumps(task("failed", ["not", "an", "object"])).encode(),
    ],
)
def test_malformed_callbacks_are_refused(body: bytes) -> None:
    with pytest.raises(CallbackInvalid):
        idle().parse_callback(body, {})


@pytest.mark.parametrize(
    ("data", "state"),
    [
        (task("pending"), "running"),
        (task("running"), "running"),
        (task("success", SUCCESS), "succeeded"),
        (task("failed", FAILED), "failed"),
    ],
)
def test_poll_reads_task_info(data: dict[str, object], state: str) -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json={"code": 200, "message": "success", "data": data})

    outcome = make(handler).poll("task_1")
    assert (outcome.state, outcome.task_id) == (state, "task_1")
    assert (seen[0].method, seen[0].url.path, seen[0].url.params["task_id"]) == ("GET", "/api/v1/client/job/TaskInfo", "task_1")
    assert seen[0].headers["x-api-key"] == "secret-key"


def test_poll_errors_are_classified() -> None:
    with pytest.raises(ProviderError) as missing:
        make(lambda req: httpx.Response(404, json={"code": 404, "message": "Task not found", "data": None})).poll("task_x")
    assert (missing.value.kind, missing.value.message) == ("refused", "crun: Task not found")
    with pytest.raises(ProviderError) as incomplete:
        make(lambda req: httpx.Response(200, json={"code": 200, "message": "success", "data": task("success", {"media_urls": []})})).poll("task_1")
    assert incomplete.value.kind == "retryable"


@pytest.mark.parametrize(
    ("document", "video", "code"),
    [
        ({"prompt": "x", "numberResults": 2}, None, "unsupported_option"),
        ({"prompt": "x", "frameImages": ["a.png"]}, None, "unsupported_option"),
        ({"prompt": "x", "width": 1280, "height": 720}, None, "unsupported_option"),
        ({"prompt": "x", "outputFormat": "WEBM"}, None, "unsupported_option"),
        ({"prompt": "x", "outputQuality": 80}, None, "unsupported_option"),
        ({"prompt": "x", "watermark": "w"}, None, "unsupported_option"),
        ({"prompt": "x", "publicFigureThreshold": "low"}, None, "unsupported_option"),
        ({"prompt": "x", "safety": {"mode": "fast"}}, None, "unsupported_option"),
        ({"prompt": "x", "referenceImages": ["a.png", "b.png"]}, None, "unsupported_option"),
        ({"prompt": "x" * 1001}, None, "invalid_sidecar"),
        ({"prompt": "x"}, VideoInfo("avi", 100), "video_unsupported"),
    ],
)
def test_check_refuses_what_crun_cannot_honour(document: dict[str, object], video: VideoInfo | None, code: str) -> None:
    sidecar, _ = parse_sidecar(json.dumps(document).encode())
    with pytest.raises(JobError) as caught:
        idle().check(sidecar, MODEL, video)
    assert caught.value.code == code
    if code == "unsupported_option":
        assert "`crun`" in caught.value.message


def test_check_accepts_what_crun_takes() -> None:
    sidecar, _ = parse_sidecar(
        json.dumps(
            {"prompt": "x" * 1000, "model": MODEL, "aspectRatio": "1:1", "seed": 1, "referenceImages": ["a.png"], "providerOptions": {"duration": 5}}
        ).encode()
    )
    with_duration = {**SCHEMA, "properties": {**SCHEMA["properties"], "duration": {"type": "integer"}}}
    for extension in ("mp4", "mov", "webm", "m4v"):
        make(lambda req: httpx.Response(500), schema=with_duration).check(sidecar, MODEL, VideoInfo(extension, 50 * 1024 * 1024))


def test_unknown_model_is_refused() -> None:
    sidecar, _ = parse_sidecar(b'{"prompt": "x", "model": "aleph"}')
    with pytest.raises(JobError) as caught:
        idle().resolve_model(sidecar)
    assert caught.value.code == "unknown_model"
    assert MODEL in caught.value.message


# ---- the model's input_schema and EstimateTask, read at run time ----------------------------------


def counting(log: list[str], status: int = 200, body: object = None) -> Handler:
    def handler(req: httpx.Request) -> httpx.Response:
        log.append(req.url.path)
        return httpx.Response(status, json=body if body is not None else {"code": 200, "message": "success", "data": {"task_id": "task_1"}})

    return handler


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ({"prompt": "x", "providerOptions": {"duration": 5}}, "`duration` (from `providerOptions.duration`)"),
        ({"prompt": "x", "seed": 3}, "`seed` (from `seed`)"),
    ],
)
def test_a_field_the_schema_does_not_permit_is_refused_naming_it_and_the_allowed_ones(document: dict[str, object], named: str) -> None:
    without_seed = {**SCHEMA, "properties": {name: spec for name, spec in SCHEMA["properties"].items() if name != "seed"}}
    sidecar, _ = parse_sidecar(json.dumps(document).encode())
    with pytest.raises(JobError) as caught:
        make(lambda req: httpx.Response(500), schema=without_seed).check(sidecar, MODEL, None)
    assert caught.value.code == "unsupported_option"
    assert named in caught.value.message
    assert "permits: `aspect_ratio`, `img_urls`, `prompt`, `video_url`" in caught.value.message


def test_a_value_outside_the_schemas_enum_and_a_required_field_left_out_are_refused() -> None:
    sidecar, _ = parse_sidecar(b'{"prompt": "x", "aspectRatio": "21:9"}')
    with pytest.raises(JobError, match=r'`aspectRatio` is "21:9".*one of: "16:9", "9:16", "1:1"') as enum:
        idle().check(sidecar, MODEL, None)
    assert enum.value.code == "invalid_sidecar"
    needs_duration = {**SCHEMA, "properties": {**SCHEMA["properties"], "duration": {}}, "required": ["prompt", "video_url", "duration"]}
    with pytest.raises(JobError, match="requires input `duration`"):
        make(lambda req: httpx.Response(500), schema=needs_duration).check(parse_sidecar(b'{"prompt": "x"}')[0], MODEL, None)


def test_the_schema_is_read_once_and_cached() -> None:
    reads: list[str] = []
    adapter = make(lambda req: httpx.Response(500))
    original = adapter.http
    adapter.http = httpx.Client(transport=httpx.MockTransport(lambda req: (reads.append(req.url.path), original.send(req))[1]))
    sidecar, _ = parse_sidecar(b'{"prompt": "x"}')
    for _ in range(3):
        adapter.check(sidecar, MODEL, None)
    assert reads == ["/api/v1/client/job/Models/runway/gen-4-aleph"]


@pytest.mark.parametrize(
    ("status", "body", "code", "retryable"),
    [
        (503, {"code": 503, "message": "busy"}, "provider_unavailable", True),
        (200, {"code": 200, "message": "success", "data": {"model": MODEL}}, "provider_unavailable", True),
        (200, {"code": 401, "message": "Unauthorized", "data": None}, "provider_rejected", False),
        (404, {"code": 404, "message": "Model not found"}, "provider_rejected", False),
    ],
)
def test_a_schema_that_cannot_be_read_is_no_guess(status: int, body: object, code: str, retryable: bool) -> None:
    adapter = make(lambda req: httpx.Response(500))
    adapter.http = httpx.Client(transport=httpx.MockTransport(lambda req: httpx.Response(status, json=body)))
    with pytest.raises(JobError) as caught:
        adapter.check(parse_sidecar(b'{"prompt": "x"}')[0], MODEL, None)
    assert (caught.value.code, caught.value.retryable, caught.value.stage) == (code, retryable, "intake")


def test_estimate_runs_before_create_task_with_the_same_model_and_input() -> None:
    seen: list[httpx.Request] = []
    adapter = make(lambda req: httpx.Response(200, json={"code": 200, "message": "success", "data": {"task_id": "task_1"}}))
    original = adapter.http
    adapter.http = httpx.Client(transport=httpx.MockTransport(lambda req: (seen.append(req), original.send(req))[1]))
    assert adapter.submit(request({"prompt": "snow", "seed": 4})) == "task_1"
    paths = [req.url.path for req in seen]
    assert paths == ["/api/v1/client/job/Models/runway/gen-4-aleph", "/api/v1/client/job/EstimateTask", "/api/v1/client/job/CreateTask"]
    estimate, create = json.loads(seen[1].content), json.loads(seen[2].content)
    assert estimate == {"model": MODEL, "input": create["input"]}
    assert seen[1].headers["x-api-key"] == "secret-key"


def test_an_unaffordable_estimate_fails_insufficient_credits_and_creates_nothing() -> None:
    created: list[str] = []
    adapter = make(counting(created), estimate={"estimated_credits": 60, "balance": 12, "affordable": False})
    with pytest.raises(JobError) as caught:
        adapter.submit(request())
    assert created == []
    error = caught.value
    assert (error.code, error.retryable, error.stage) == ("insufficient_credits", False, "submit")
    assert "costs 60 credits and the account has 12" in error.message
    assert error.details == {"estimatedCredits": 60, "balance": 12}


@pytest.mark.parametrize(
    ("estimate", "code", "retryable"),
    [
        ({"code": 402, "message": "Insufficient Credits", "data": None}, "insufficient_credits", False),
        ({"code": 422, "message": "Missing Params or Type Error", "errors": ["input.seed"]}, "provider_rejected", False),
        ({"code": 500, "message": "Server Error", "data": None}, "provider_unavailable", True),
        ({"code": 200, "message": "success", "data": {"estimated_credits": 60}}, "provider_unavailable", True),
    ],
)
def test_estimate_failures_create_nothing(estimate: dict[str, object], code: str, retryable: bool) -> None:
    created: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("EstimateTask"):
            return httpx.Response(200, json=estimate)
        created.append(req.url.path)
        return httpx.Response(200, json={"code": 200, "message": "success", "data": {"task_id": "task_1"}})

    adapter = make(lambda req: httpx.Response(500))
    original = adapter.http
    adapter.http = httpx.Client(transport=httpx.MockTransport(lambda req: handler(req) if "job/Models" not in req.url.path else original.send(req)))
    with pytest.raises(JobError) as caught:
        adapter.submit(request())
    assert created == []
    assert (caught.value.code, caught.value.retryable) == (code, retryable)
