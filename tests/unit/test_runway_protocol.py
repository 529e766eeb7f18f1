"""Runway's own API adapter (``aleph2``) against canned HTTP answers (httpx's mock transport)."""

import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from aleph_pipeline.errors import JobError
from aleph_pipeline.providers import _REGISTRY
from aleph_pipeline.providers.base import CallbackInvalid, Provider, ProviderError, SubmitRequest, VideoInfo
from aleph_pipeline.providers.runway import API_VERSION, MultipartStream, RunwayProtocol, failure_error
from aleph_pipeline.sidecar import parse_sidecar

Handler = Callable[[httpx.Request], httpx.Response]
MODEL = "aleph2"
VIDEO = b"\x00\x00\x00\x18ftypmp42" + b"v" * 5000
IMAGE = b"\x89PNG" + b"i" * 300


def make(handler: Handler) -> RunwayProtocol:
    return RunwayProtocol(
        id="runway",
        base_url="https://api.runway.test",
        api_key=lambda: "secret-key",
        http=httpx.Client(transport=httpx.MockTransport(handler)),
        models=(MODEL,),
        default_result_hosts=("cdn.runway.test",),
    )


def idle() -> RunwayProtocol:
    return make(lambda req: httpx.Response(500))


def request(document: dict[str, object] | None = None, frames: tuple[str, ...] = ()) -> SubmitRequest:
    sidecar, _ = parse_sidecar(json.dumps(document or {"prompt": "snow"}).encode())
    return SubmitRequest("j" * 32, sidecar, MODEL, "https://s3.test/in/clip.mp4?X-Amz-Signature=abc", (), "https://cb.test/x?token=t", frames)


def s3_object(data: bytes, content_type: str) -> httpx.Response:
    # An iterator body, so the adapter reads it as a stream (bytes would be read at once).
    return httpx.Response(200, content=iter([data[:1000], data[1000:]]), headers={"Content-Type": content_type, "Content-Length": str(len(data))})


class FakeRunway:
    """S3 (the inputs), Runway's API and its upload target, recording every request."""

    def __init__(self, create: httpx.Response | None = None) -> None:
        self.seen: list[httpx.Request] = []
        self.uploaded: dict[str, bytes] = {}
        self.create = create or httpx.Response(200, json={"id": "task-1"})
        self.uploads = 0

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.seen.append(req)
        if req.url.host == "s3.test":
            data = VIDEO if req.url.path.endswith(".mp4") else IMAGE
            return s3_object(data, "video/mp4" if data is VIDEO else "image/png")
        if req.url.path == "/v1/uploads":
            self.uploads += 1
            name = json.loads(req.content)["filename"]
            return httpx.Response(
                200,
                json={
                    "uploadUrl": f"https://upload.test/u{self.uploads}",
                    "fields": {"key": f"k/{name}", "policy": "p"},
                    "runwayUri": f"runway://u{self.uploads}",
                },
            )
        if req.url.host == "upload.test":
            self.uploaded[req.url.path] = req.read()
            return httpx.Response(204)
        if req.url.path == "/v1/video_to_video":
            return self.create
        return httpx.Response(404, json={"error": "not found"})

    def api_calls(self) -> list[httpx.Request]:
        return [r for r in self.seen if r.url.host == "api.runway.test"]


def test_registered_with_its_base_url_model_and_hosts() -> None:
    base_url, constructor, models, hosts = _REGISTRY["runway"]
    assert (base_url, constructor, models) == ("https://api.dev.runwayml.com", RunwayProtocol, (MODEL,))
    assert "dnznrvs05pmza.cloudfront.net" in hosts
    assert RunwayProtocol.webhooks is False and Provider.webhooks is True


def test_submit_uploads_the_video_then_creates_the_task_with_runways_headers() -> None:
    fake = FakeRunway()
    document = {"prompt": "snow", "seed": 7, "aspectRatio": "9:16", "publicFigureThreshold": "low"}
    assert make(fake).submit(request(document)) == "task-1"
    ticket, create = fake.api_calls()
    assert json.loads(ticket.content) == {"filename": "clip.mp4", "type": "ephemeral"}
    for call in (ticket, create):
        assert call.headers["Authorization"] == "Bearer secret-key"
        assert call.headers["X-Runway-Version"] == API_VERSION == "2024-11-06"
    assert json.loads(create.content) == {
        "model": MODEL,
        "videoUri": "runway://u1",
        "promptText": "snow",
        "seed": 7,
        "ratio": "720:1280",
        "contentModeration": {"publicFigureThreshold": "low"},
    }
    upload = next(r for r in fake.seen if r.url.host == "upload.test")
    assert "authorization" not in upload.headers  # the presigned target gets no API key
    body = fake.uploaded["/u1"]
    assert int(upload.headers["Content-Length"]) == len(body)
    assert "transfer-encoding" not in upload.headers  # a presigned POST target refuses chunked bodies
    # The ticket's fields first, the file last (a presigned POST refuses any other order).
    assert body.index(b'name="key"') < body.index(b'name="policy"') < body.index(b'name="file"; filename="clip.mp4"') < body.index(VIDEO)
    assert b"k/clip.mp4" in body


def test_frame_images_are_uploaded_and_become_keyframes() -> None:
    fake = FakeRunway()
    frames = [{"image": "a.png", "timestamp": 1.5}, {"image": "b.png", "frame": "last"}, {"image": "c.png", "frame": 0}]
    urls = ("https://s3.test/in/a.png", "https://s3.test/in/b.png", "https://s3.test/in/c.png")
    make(fake).submit(request({"prompt": "snow", "frameImages": frames}, urls))
    create = json.loads(fake.api_calls()[-1].content)
    assert create["keyframes"] == [{"seconds": 1.5, "uri": "runway://u2"}, {"at": "last", "uri": "runway://u3"}, {"at": "first", "uri": "runway://u4"}]
    assert IMAGE in fake.uploaded["/u2"]


def test_the_multipart_body_is_produced_as_it_is_sent() -> None:
    produced: list[int] = []

    def chunks() -> Iterator[bytes]:
        for index in range(3):
            produced.append(index)
            yield b"x" * 10

    stream = MultipartStream({"key": "k"}, "v.mp4", "video/mp4", chunks())
    parts = iter(stream)
    head = next(parts)
    assert produced == []  # nothing read from the source before the head went out
    body = head + b"".join(parts)
    assert produced == [0, 1, 2]
    assert body.endswith(f"\r\n--{stream.boundary}--\r\n".encode())
    assert stream.length(30) == len(body)


def test_a_refused_upload_ticket_refuses_and_an_upload_5xx_is_safe_to_retry() -> None:
    def no_key(req: httpx.Request) -> httpx.Response:
        if req.url.host == "s3.test":
            return s3_object(VIDEO, "video/mp4")
        return httpx.Response(401, json={"error": "Invalid API key"})

    with pytest.raises(ProviderError) as refused:
        make(no_key).submit(request())
    assert (refused.value.kind, refused.value.code) == ("refused", "401")
    assert "Invalid API key" in refused.value.message and "secret-key" not in refused.value.message

    def ticket_5xx(req: httpx.Request) -> httpx.Response:
        if req.url.host == "s3.test":
            return s3_object(VIDEO, "video/mp4")
        return httpx.Response(502)

    with pytest.raises(ProviderError) as later:
        make(ticket_5xx).submit(request())
    assert later.value.kind == "retryable"  # no task comes of an upload: nothing to pay twice


def test_an_unreadable_input_is_retryable_and_nothing_reaches_runway() -> None:
    fake = FakeRunway()

    def s3_down(req: httpx.Request) -> httpx.Response:
        return httpx.Response(503) if req.url.host == "s3.test" else fake(req)

    with pytest.raises(ProviderError) as error:
        make(s3_down).submit(request())
    assert error.value.kind == "retryable" and "HTTP 503" in error.value.message
    assert fake.api_calls() == []


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (429, {"error": "You have exceeded the rate limit or daily task limit."}, "retryable"),  # not taken
        (500, {"error": "An unexpected error occurred."}, "ambiguous"),  # the task may exist
        (502, None, "ambiguous"),
        (400, {"error": "Validation of body failed", "issues": [{"path": ["ratio"], "message": "Invalid ratio"}]}, "refused"),
        (400, {"error": "You do not have enough credits to run this task."}, "refused"),
    ],
)
def test_submit_failures_are_classified(status: int, body: object, kind: str) -> None:
    fake = FakeRunway(httpx.Response(status, json=body) if body is not None else httpx.Response(status, text="<html>"))
    with pytest.raises(ProviderError) as error:
        make(fake).submit(request())
    assert error.value.kind == kind
    if body and "issues" in body:  # type: ignore[operator]
        assert "Validation of body failed: Invalid ratio" in error.value.message


def test_a_submit_answer_without_an_id_is_ambiguous() -> None:
    with pytest.raises(ProviderError) as error:
        make(FakeRunway(httpx.Response(200, json={}))).submit(request())
    assert error.value.kind == "ambiguous"


def poll_answer(document: object, status: int = 200) -> RunwayProtocol:
    def handler(req: httpx.Request) -> httpx.Response:
        assert (req.method, req.url.path) == ("GET", "/v1/tasks/t-1")
        assert req.headers["X-Runway-Version"] == API_VERSION
        return httpx.Response(status, json=document)

    return make(handler)


@pytest.mark.parametrize("state", ["PENDING", "THROTTLED", "RUNNING"])
def test_unfinished_tasks_are_running_and_throttled_says_so(state: str) -> None:
    outcome = poll_answer({"id": "t-1", "status": state, "progress": 0.4}).poll("t-1")
    assert (outcome.state, outcome.task_id, outcome.throttled) == ("running", "t-1", state == "THROTTLED")


def test_succeeded_gives_the_output_urls_of_this_poll() -> None:
    outcome = poll_answer({"id": "t-1", "status": "SUCCEEDED", "output": ["https://cdn.runway.test/a.mp4?_jwt=1"]}).poll("t-1")
    assert outcome.state == "succeeded"
    assert [(item.id, item.video_url) for item in outcome.items] == [("1", "https://cdn.runway.test/a.mp4?_jwt=1")]


def test_succeeded_without_output_is_asked_again() -> None:
    with pytest.raises(ProviderError) as error:
        poll_answer({"id": "t-1", "status": "SUCCEEDED", "output": []}).poll("t-1")
    assert error.value.kind == "retryable"


@pytest.mark.parametrize(
    ("code", "retryable", "words"),
    [
        ("SAFETY.INPUT.TEXT", False, "retrying cannot help"),
        ("SAFETY.OUTPUT.VIDEO", False, "another prompt may pass"),
        ("INTERNAL.BAD_OUTPUT.CODE01", True, "trying again may work"),
        ("INTERNAL", True, "trying again may work"),
        ("ASSET.INVALID", False, "fix the video"),
    ],
)
def test_failure_codes_are_classified(code: str, retryable: bool, words: str) -> None:
    outcome = poll_answer({"id": "t-1", "status": "FAILED", "failure": "Moderated", "failureCode": code}).poll("t-1")
    assert outcome.state == "failed" and outcome.error is not None
    assert (outcome.error.code, outcome.error.retryable, outcome.error.details) == ("generation_failed", retryable, {"providerCode": code})
    assert words in outcome.error.message and "Moderated" in outcome.error.message


def test_a_failure_without_a_code_is_not_retried() -> None:
    error = failure_error("runway", None, None)
    assert (error.retryable, error.details, error.message) == (False, {}, "runway: the task failed")


def test_cancelled_is_a_terminal_failure() -> None:
    outcome = poll_answer({"id": "t-1", "status": "CANCELLED"}).poll("t-1")
    assert outcome.state == "failed" and outcome.error is not None
    assert outcome.error.details == {"providerCode": "CANCELLED"} and not outcome.error.retryable


@pytest.mark.parametrize(("status", "kind"), [(404, "refused"), (401, "refused"), (429, "retryable"), (503, "retryable")])
def test_poll_errors_are_classified(status: int, kind: str) -> None:
    with pytest.raises(ProviderError) as error:
        poll_answer({"error": "nope"}, status).poll("t-1")
    assert error.value.kind == kind


def test_an_unknown_status_is_not_taken_for_an_ending() -> None:
    with pytest.raises(ProviderError) as error:
        poll_answer({"id": "t-1", "status": "PAUSED"}).poll("t-1")
    assert error.value.kind == "retryable" and "PAUSED" in error.value.message


def test_every_callback_is_refused() -> None:
    with pytest.raises(CallbackInvalid, match="sends no callbacks"):
        idle().parse_callback(b'{"id": "t-1", "status": "SUCCEEDED", "output": ["https://cdn.runway.test/a.mp4"]}', {})


# ---- intake ------------------------------------------------------------------------------------


def check(document: dict[str, object], seconds: float | None = None) -> None:
    sidecar, _ = parse_sidecar(json.dumps(document).encode())
    video = None
    if seconds is not None:
        video = VideoInfo("mp4", 1000, lambda offset, length: b"")
        video.__dict__["duration"] = seconds
    idle().check(sidecar, MODEL, video)


def test_accepts_what_aleph2_takes() -> None:
    frames = [{"image": f"{n}.png", "timestamp": n} for n in range(4)] + [{"image": "l.png", "frame": "last"}]
    check({"prompt": "x" * 1000, "seed": 1, "aspectRatio": "1:1", "publicFigureThreshold": "auto", "frameImages": frames}, seconds=30.0)


def test_refuses_a_video_over_30_seconds() -> None:
    with pytest.raises(JobError, match=r"30\.50 s long; model `aleph2` edits videos of at most 30 seconds") as error:
        check({"prompt": "x"}, seconds=30.5)
    assert error.value.code == "video_duration"


def test_refuses_more_than_five_keyframes() -> None:
    frames = [{"image": f"{n}.png", "timestamp": n} for n in range(6)]
    with pytest.raises(JobError, match="6 images; model `aleph2` takes at most 5 keyframes"):
        check({"prompt": "x", "frameImages": frames})


def test_refuses_a_frame_image_without_a_place() -> None:
    with pytest.raises(JobError, match="give each entry a `timestamp` or a `frame`"):
        check({"prompt": "x", "frameImages": ["a.png"]})


def test_refuses_a_keyframe_past_the_end() -> None:
    with pytest.raises(JobError, match="timestamp 12 s is past the end"):
        check({"prompt": "x", "frameImages": [{"image": "a.png", "timestamp": 12}]}, seconds=10.0)


def test_refuses_a_prompt_over_1000_characters_or_utf16_units() -> None:
    with pytest.raises(JobError, match="1001 characters; provider `runway` takes at most 1000"):
        check({"prompt": "x" * 1001})
    with pytest.raises(JobError, match="1002 UTF-16 units long"):
        check({"prompt": "\U0001f3ac" * 501})  # 501 characters, each two UTF-16 units


@pytest.mark.parametrize("field", [{"referenceImages": ["r.png"]}, {"numberResults": 2}, {"watermark": "w"}, {"width": 640, "height": 480}])
def test_refuses_fields_aleph2_does_not_honour(field: dict[str, object]) -> None:
    with pytest.raises(JobError, match="cannot be honoured by provider `runway`") as error:
        check({"prompt": "x", **field})
    assert error.value.code == "unsupported_option"


@pytest.mark.parametrize("name", ["videoUri", "promptText", "keyframes", "model", "contentModeration"])
def test_provider_options_may_not_replace_what_the_pipeline_sets(name: str) -> None:
    with pytest.raises(JobError, match=f"`{name}`"):
        check({"prompt": "x", "providerOptions": {name: "x"}})


def test_provider_options_add_documented_fields() -> None:
    body = idle().request_body(request({"prompt": "x", "providerOptions": {"targetAspectRatio": "4:5"}}), "runway://v", ())
    assert body["targetAspectRatio"] == "4:5" and body["videoUri"] == "runway://v"
