"""The Runware protocol adapter against canned HTTP answers (httpx's mock transport)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from aleph_pipeline.errors import JobError
from aleph_pipeline.providers.base import CallbackInvalid, ProviderError, SubmitRequest, VideoInfo
from aleph_pipeline.providers.runware import ALEPH_1, ALEPH_2, MODELS, RunwareProtocol, classify_code, task_uuid
from aleph_pipeline.sidecar import parse_sidecar

Handler = Callable[[httpx.Request], httpx.Response]
JOB_ID = "0123456789abcdef0123456789abcdef"

# The four response examples of the "Runway Aleph 2.0 | Runware Docs" page, verbatim.
DOC_RESPONSES = [
    """{
  "taskType": "videoInference",
  "taskUUID": "2765b8bd-6e5d-4a18-86aa-e53fc5beba1e",
  "videoUUID": "fb84cf5e-7f5c-4cad-834c-be26bf9e8570",
  "videoURL": "https://vm.runware.ai/video/os/a02d21/ws/5/vi/fb84cf5e-7f5c-4cad-834c-be26bf9e8570.mp4",
  "seed": 1062989583,
  "cost": 1.6968
}""",
    """{
  "taskType": "videoInference",
  "taskUUID": "50ace034-9cb9-42f4-8400-06e5d9fd0d22",
  "videoUUID": "164ec61e-58f0-4491-997c-1618ab200192",
  "videoURL": "https://vm.runware.ai/video/os/a06dlim3/ws/5/vi/164ec61e-58f0-4491-997c-1618ab200192.mp4",
  "seed": 1035704411,
  "cost": 1.6968
}""",
    """{
  "taskType": "videoInference",
  "taskUUID": "39c5fd6c-3293-481a-a8c8-e46ef84d7b1e",
  "videoUUID": "6582b14a-ce0b-4df3-9a82-e2654bebeb9d",
  "videoURL": "https://vm.runware.ai/video/os/a07dlim3/ws/5/vi/6582b14a-ce0b-4df3-9a82-e2654bebeb9d.mp4",
  "seed": 572555908,
  "cost": 1.6968
}""",
    """{
  "taskType": "videoInference",
  "taskUUID": "ff893344-dc19-4976-bbed-c53650663452",
  "videoUUID": "b3273477-db4c-4afc-bae9-8174cd6a6831",
  "videoURL": "https://vm.runware.ai/video/os/a02d21/ws/5/vi/b3273477-db4c-4afc-bae9-8174cd6a6831.mp4",
  "seed": 1994655980,
  "cost": 1.6968
}""",
]


def make(handler: Handler | None = None) -> RunwareProtocol:
    return RunwareProtocol(
        id="runware",
        base_url="https://api.runware.test",
        api_key=lambda: "secret-key",
        http=httpx.Client(transport=httpx.MockTransport(handler or (lambda req: httpx.Response(500)))),
        models=MODELS,
        default_result_hosts=("vm.runware.ai",),
    )


def sidecar(document: dict[str, Any]) -> Any:
    return parse_sidecar(json.dumps({"prompt": "snow", **document}).encode())[0]


def request(document: dict[str, Any], model: str = ALEPH_2, refs: tuple[str, ...] = (), frames: tuple[str, ...] = ()) -> SubmitRequest:
    return SubmitRequest(JOB_ID, sidecar(document), model, "https://in.test/v.mp4", refs, "https://cb.test/callbacks/runware/x?token=t", frames)


def accepting(seen: list[httpx.Request]) -> Handler:
    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        body = json.loads(req.content)
        return httpx.Response(200, json={"data": [{"taskType": "videoInference", "taskUUID": body[0]["taskUUID"]}]})

    return handler


def video(seconds: float | None, extension: str = "mp4") -> VideoInfo:
    if seconds is None:
        return VideoInfo(extension, None)
    # A minimal MP4: an mvhd with timescale 1000.
    mvhd_body = bytes(4) + bytes(8) + (1000).to_bytes(4, "big") + int(seconds * 1000).to_bytes(4, "big") + bytes(80)
    mvhd = (8 + len(mvhd_body)).to_bytes(4, "big") + b"mvhd" + mvhd_body
    moov = (8 + len(mvhd)).to_bytes(4, "big") + b"moov" + mvhd
    data = b"\x00\x00\x00\x10ftypisom\x00\x00\x02\x00" + moov
    return VideoInfo(extension, len(data), lambda offset, length: data[offset : offset + length])


# ---- the request --------------------------------------------------------------------------------


def test_task_uuid_is_a_version_4_uuid_derived_from_the_job() -> None:
    value = uuid.UUID(task_uuid(JOB_ID))
    assert value.version == 4
    assert value.variant == uuid.RFC_4122
    assert task_uuid(JOB_ID) == task_uuid(JOB_ID)
    assert task_uuid(JOB_ID) != task_uuid("f" * 32)


def test_aleph_2_submit_sends_an_array_with_every_option_and_a_bearer_key() -> None:
    seen: list[httpx.Request] = []
    provider = make(accepting(seen))
    document = {
        "seed": 7,
        "numberResults": 3,
        "outputFormat": "webm",
        "outputQuality": 80,
        "safety": {"checkContent": True, "mode": "full"},
        "publicFigureThreshold": "low",
        "frameImages": ["a.png", {"image": "b.png", "frame": "last"}, {"image": "c.png", "timestamp": 1.25}, {"image": "d.png", "frame": 0}],
        "providerOptions": {"ttl": 3600},
    }
    frames = ("https://in.test/a", "https://in.test/b", "https://in.test/c", "https://in.test/d")
    assert provider.submit(request(document, frames=frames)) == task_uuid(JOB_ID)
    sent = seen[0]
    assert sent.url == "https://api.runware.test/v1"
    assert sent.headers["authorization"] == "Bearer secret-key"
    assert json.loads(sent.content) == [
        {
            "taskType": "videoInference",
            "taskUUID": task_uuid(JOB_ID),
            "model": "runway:aleph@2.0",
            "positivePrompt": "snow",
            "deliveryMethod": "async",
            "outputType": "URL",
            "includeCost": True,
            "webhookURL": "https://cb.test/callbacks/runware/x?token=t",
            "inputs": {
                "video": "https://in.test/v.mp4",
                "frameImages": [
                    "https://in.test/a",
                    {"image": "https://in.test/b", "frame": "last"},
                    {"image": "https://in.test/c", "timestamp": 1.25},
                    {"image": "https://in.test/d", "frame": 0},
                ],
            },
            "seed": 7,
            "numberResults": 3,
            "outputFormat": "WEBM",
            "outputQuality": 80,
            "safety": {"checkContent": True, "mode": "full"},
            "providerSettings": {"runway": {"contentModeration": {"publicFigureThreshold": "low"}}},
            "ttl": 3600,
        }
    ]


def test_aleph_1_takes_one_reference_image_and_a_size_from_the_aspect_ratio() -> None:
    seen: list[httpx.Request] = []
    provider = make(accepting(seen))
    document = {"model": ALEPH_1, "referenceImages": ["r.png"], "aspectRatio": "21:9", "numberResults": 2}
    provider.check(sidecar(document), ALEPH_1, None)
    provider.submit(request(document, ALEPH_1, refs=("https://in.test/r",)))
    task = json.loads(seen[0].content)[0]
    assert task["model"] == "runway:2@1"
    assert task["inputs"] == {"video": "https://in.test/v.mp4", "referenceImages": ["https://in.test/r"]}
    assert (task["width"], task["height"]) == (1584, 672)
    assert "aspectRatio" not in task


def test_aleph_1_takes_a_documented_width_height_pair() -> None:
    seen: list[httpx.Request] = []
    document = {"width": 848, "height": 480}
    make().check(sidecar(document), ALEPH_1, None)
    make(accepting(seen)).submit(request(document, ALEPH_1))
    task = json.loads(seen[0].content)[0]
    assert (task["width"], task["height"]) == (848, 480)


@pytest.mark.parametrize(
    ("document", "code", "words"),
    [
        ({"width": 1000, "height": 700}, "unsupported_option", "1000x700 is not a size model `runway:2@1` makes"),
        ({"width": 1280}, "invalid_sidecar", "both `width` and `height`"),
        ({"width": 1280, "height": 720, "aspectRatio": "16:9"}, "invalid_sidecar", "not both"),
        ({"referenceImages": ["a.png", "b.png"]}, "unsupported_option", "one reference image, not 2"),
        ({"frameImages": ["a.png"]}, "unsupported_option", "`frameImages`"),
        ({"watermark": "x"}, "unsupported_option", "`watermark`"),
        ({"prompt": "x" * 1001}, "invalid_sidecar", "1001 characters"),
        ({"providerOptions": {"numberResults": 4}}, "invalid_sidecar", "`numberResults`"),
        ({"providerOptions": {"uploadEndpoint": "https://x.test"}}, "invalid_sidecar", "`uploadEndpoint`"),
        ({"providerOptions": {"ttl": 30}}, "invalid_sidecar", "`ttl`"),
        ({"seed": 1, "providerOptions": {"seed": 2}}, "invalid_sidecar", "`seed`"),
        ({"publicFigureThreshold": "low", "providerOptions": {"providerSettings": {}}}, "invalid_sidecar", "`providerSettings`"),
    ],
)
def test_aleph_1_refusals_name_the_problem(document: dict[str, Any], code: str, words: str) -> None:
    with pytest.raises(JobError) as caught:
        make().check(sidecar(document), ALEPH_1, None)
    assert caught.value.code == code
    assert words in caught.value.message


@pytest.mark.parametrize("field", [{"referenceImages": ["a.png"]}, {"aspectRatio": "16:9"}, {"width": 1280, "height": 720}, {"watermark": "w"}])
def test_aleph_2_refuses_what_only_aleph_1_takes(field: dict[str, Any]) -> None:
    with pytest.raises(JobError) as caught:
        make().check(sidecar(field), ALEPH_2, None)
    assert caught.value.code == "unsupported_option"
    assert "runway:aleph@2.0" in caught.value.message


@pytest.mark.parametrize(("seconds", "ok"), [(1.5, False), (2.0, True), (12.0, True), (30.0, True), (40.0, False)])
def test_aleph_2_takes_videos_of_2_to_30_seconds(seconds: float, ok: bool) -> None:
    provider = make()
    if ok:
        provider.check(sidecar({}), ALEPH_2, video(seconds))
        return
    with pytest.raises(JobError) as caught:
        provider.check(sidecar({}), ALEPH_2, video(seconds))
    assert caught.value.code == "video_duration"
    assert f"{seconds:.2f} s" in caught.value.message
    assert "2 to 30 seconds" in caught.value.message


def test_aleph_1_has_no_duration_limit_and_a_url_video_is_left_to_runware() -> None:
    make().check(sidecar({}), ALEPH_1, video(40.0))
    make().check(sidecar({}), ALEPH_2, video(None))


def test_an_unreadable_header_is_refused_for_aleph_2() -> None:
    data = b"garbage" * 20
    with pytest.raises(JobError) as caught:
        make().check(sidecar({}), ALEPH_2, VideoInfo("mp4", len(data), lambda offset, length: data[offset : offset + length]))
    assert caught.value.code == "video_unsupported"
    assert "duration could not be read" in caught.value.message


def test_a_frame_timestamp_past_the_end_of_the_video_is_refused() -> None:
    with pytest.raises(JobError, match="past the end"):
        make().check(sidecar({"frameImages": [{"image": "a.png", "timestamp": 9}]}), ALEPH_2, video(5.0))


# ---- answers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", DOC_RESPONSES)
def test_the_documented_responses_parse_as_a_webhook_and_as_a_poll(raw: str) -> None:
    expected = json.loads(raw)
    outcome = make().parse_callback(raw.encode(), {})
    assert outcome.state == "succeeded"
    assert outcome.task_id == expected["taskUUID"]
    assert outcome.video_urls == (expected["videoURL"],)
    [item] = outcome.items
    assert (item.id, item.video_url, item.seed, item.cost) == (expected["videoUUID"], expected["videoURL"], expected["seed"], 1.6968)
    # The webhook envelope Runware POSTs, and a getResponse answer, carry the same item.
    wrapped = make().parse_callback(json.dumps({"data": [expected]}).encode(), {})
    assert wrapped.items == outcome.items
    polled = make(lambda req: httpx.Response(200, json={"data": [{**expected, "status": "success"}]})).poll(expected["taskUUID"])
    assert polled.items == outcome.items


def test_poll_sends_get_response_and_reads_each_status() -> None:
    seen: list[Any] = []
    answers = iter(
        [
            {"data": [{"taskType": "videoInference", "taskUUID": "t", "status": "processing"}]},
            {
                "data": [
                    {"taskUUID": "t", "status": "success", "videoUUID": "v1", "videoURL": "https://vm.runware.ai/1.mp4", "cost": 0.5},
                    {"taskUUID": "t", "status": "processing"},
                ]
            },
            {"data": [{"taskUUID": "t", "status": "error", "error": {"code": "inferenceError", "message": "the model failed"}}]},
        ]
    )

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append((req.headers["authorization"], json.loads(req.content)))
        return httpx.Response(200, json=next(answers))

    provider = make(handler)
    assert provider.poll("t").state == "running"
    partial = provider.poll("t")
    assert partial.state == "succeeded"
    assert [item.id for item in partial.items] == ["v1"]
    failed = provider.poll("t")
    assert failed.state == "failed"
    assert failed.error is not None
    assert failed.error.message == "runware: the model failed (inferenceError)"
    assert failed.error.retryable
    assert seen[0] == ("Bearer secret-key", [{"taskType": "getResponse", "taskUUID": "t"}])


def test_poll_of_an_unknown_task_fails_the_job() -> None:
    body = {"errors": [{"code": "taskFailedOrNotFound", "message": "Task not found", "taskUUID": "t"}]}
    outcome = make(lambda req: httpx.Response(400, json=body)).poll("t")
    assert outcome.state == "failed"
    assert outcome.error is not None
    assert "taskFailedOrNotFound" in outcome.error.message


def test_poll_that_cannot_be_answered_is_retryable() -> None:
    with pytest.raises(ProviderError) as caught:
        make(lambda req: httpx.Response(503, text="busy")).poll("t")
    assert caught.value.kind == "retryable"


@pytest.mark.parametrize(
    "body",
    [
        {"errors": [{"code": "contentPolicyViolation", "message": "blocked", "taskType": "videoInference", "taskUUID": "t"}]},
        {"data": [{"taskUUID": "t", "status": "error", "error": {"code": "contentPolicyViolation", "message": "blocked"}}]},
    ],
)
def test_a_failure_webhook_in_either_form_fails_with_its_message(body: dict[str, Any]) -> None:
    outcome = make().parse_callback(json.dumps(body).encode(), {})
    assert outcome.state == "failed"
    assert outcome.task_id == "t"
    assert outcome.error is not None
    assert outcome.error.code == "generation_failed"
    assert outcome.error.message == "runware: blocked (contentPolicyViolation)"
    assert not outcome.error.retryable


@pytest.mark.parametrize(
    "body",
    [b"not json", b"{}", b'{"data": []}', b'{"data": [{"taskUUID": "t", "status": "success"}]}', b'{"data": [{"taskUUID": "a"}, {"taskUUID": "b"}]}'],
)
def test_malformed_webhooks_are_refused(body: bytes) -> None:
    with pytest.raises(CallbackInvalid):
        make().parse_callback(body, {})


# ---- errors -------------------------------------------------------------------------------------


def envelope(code: str, message: str = "m") -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message, "parameter": "p", "taskType": "videoInference", "taskUUID": "t"}]}


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (402, "insufficientCredits", "refused"),
        (400, "insufficientBalance", "refused"),
        (429, "quotaExceeded", "refused"),
        (401, "invalidApiKey", "refused"),
        (400, "missingPositivePrompt", "refused"),
        (400, "unsupportedParameter", "refused"),
        (400, "presignedUrlExpired", "refused"),
        (400, "contentPolicyViolation", "refused"),
        (400, "nsfwContentDetected", "refused"),
        (400, "promptBlocked", "refused"),
        (404, "taskFailedOrNotFound", "refused"),
        (500, "invalidModel", "refused"),  # the code wins over the status
        (400, "inferenceError", "retryable"),
        (400, "processingFailed", "retryable"),
        (400, "timeoutProvider", "retryable"),
        (400, "noAvailableServer", "retryable"),
        (408, "requestTimeout", "ambiguous"),  # a submit answered 408/5xx may have been taken
        (429, "rateLimitExceeded", "retryable"),
        (502, "badGateway", "ambiguous"),
        (403, "forbidden", "refused"),
    ],
)
def test_submit_errors_are_classified_like_the_official_sdk(status: int, code: str, kind: str) -> None:
    provider = make(lambda req: httpx.Response(status, json=envelope(code, "Not enough money")))
    with pytest.raises(ProviderError) as caught:
        provider.submit(request({}))
    assert caught.value.kind == kind
    assert caught.value.code == code
    assert caught.value.message.startswith(f"runware: Not enough money ({code})")
    assert "secret-key" not in str(caught.value)


def test_errors_in_a_200_answer_are_errors() -> None:
    with pytest.raises(ProviderError) as caught:
        make(lambda req: httpx.Response(200, json=envelope("invalidTaskUUID"))).submit(request({}))
    assert caught.value.kind == "refused"


def test_a_5xx_without_a_body_is_ambiguous_and_a_connect_failure_retryable() -> None:
    # A 5xx may come after the task was created: never sent again (the reconciler polls our taskUUID).
    with pytest.raises(ProviderError) as caught:
        make(lambda req: httpx.Response(500, text="oops")).submit(request({}))
    assert caught.value.kind == "ambiguous"

    def refuse(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(ProviderError) as caught:
        make(refuse).submit(request({}))
    assert caught.value.kind == "retryable"


def test_a_200_without_errors_is_accepted_even_unreadable() -> None:
    assert make(lambda req: httpx.Response(200, text="ok")).submit(request({})) == task_uuid(JOB_ID)


def test_classify_code_without_a_status() -> None:
    assert classify_code("timeoutProvider", None)
    assert not classify_code("somethingNew", None)
    assert classify_code(None, 503)


def test_a_resubmission_that_finds_its_own_task_is_accepted() -> None:
    body = {"errors": [{"code": "duplicateTaskUUID", "message": "exists", "parameter": "taskUUID", "taskUUID": task_uuid(JOB_ID)}]}
    assert make(lambda req: httpx.Response(400, json=body)).submit(request({})) == task_uuid(JOB_ID)
    other = {"errors": [{"code": "duplicateTaskUUID", "message": "exists", "parameter": "seed"}]}
    with pytest.raises(ProviderError):
        make(lambda req: httpx.Response(400, json=other)).submit(request({}))
