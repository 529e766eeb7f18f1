"""The simulator speaks Runware's protocol as Runware's pages describe it (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from local.media import duration_seconds, make_clip
from local.simulator.server import SimulatorServer

from .sim_servers import CallbackSink, QuietFiles, serve, sink_handler
from .test_simulator import FFMPEG

pytestmark = pytest.mark.timeout(90)

KEY = "sim-runware-key"


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("runware-media")
    make_clip(folder / "clip.mp4", seconds=3, size="320x180")
    make_clip(folder / "short.mp4", seconds=1.5, size="320x180")
    subprocess.run([FFMPEG, "-loglevel", "error", "-f", "lavfi", "-i", "color=red:size=64x64", "-frames:v", "1", str(folder / "red.png")], check=True)
    yield from serve(ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietFiles, directory=str(folder))))


@pytest.fixture(scope="module")
def sink() -> Iterator[CallbackSink]:
    receiver = CallbackSink()
    for url in serve(ThreadingHTTPServer(("127.0.0.1", 0), sink_handler(receiver))):
        receiver.url = url
        yield receiver


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    simulator = SimulatorServer("127.0.0.1", 0).start()
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
def client(server: SimulatorServer, sink: CallbackSink) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as http:
        http.post("/_sim/reset").raise_for_status()
        sink.clear()
        yield http
        http.post("/_sim/reset")


def task(media: str, sink: CallbackSink, **fields: Any) -> dict[str, Any]:
    return {
        "taskType": "videoInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "runway:aleph@2.0",
        "positivePrompt": "make it look like a negative",
        "deliveryMethod": "async",
        "includeCost": True,
        "webhookURL": f"{sink.url}/callbacks/runware/job?token=t",
        "inputs": {"video": f"{media}/clip.mp4"},
        **fields,
    }


def post(client: httpx.Client, tasks: list[dict[str, Any]], key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post("/runware/v1", json=tasks, headers=headers)


def get_response(client: httpx.Client, task_uuid: str) -> httpx.Response:
    return post(client, [{"taskType": "getResponse", "taskUUID": task_uuid}])


def test_aleph_2_task_is_acknowledged_edited_and_reported_by_webhook_and_poll(client: httpx.Client, media: str, sink: CallbackSink, tmp_path: Path) -> None:
    body = task(media, sink, inputs={"video": f"{media}/clip.mp4", "frameImages": [{"image": f"{media}/red.png", "frame": "first"}]})
    answer = post(client, [body])
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"data": [{"taskType": "videoInference", "taskUUID": body["taskUUID"]}]}
    [webhook] = sink.wait_for(body["taskUUID"])
    [item] = webhook["body"]["data"]
    assert item["taskType"] == "videoInference"
    assert item["taskUUID"] == body["taskUUID"]
    assert uuid.UUID(item["videoUUID"])
    assert item["cost"] == pytest.approx(0.28 * 3, abs=0.05)  # $0.28 per second of a 3 s clip
    assert isinstance(item["seed"], int)
    assert webhook["path"] == "/callbacks/runware/job?token=t"
    result = tmp_path / "result.mp4"
    result.write_bytes(client.get(item["videoURL"]).content)
    assert duration_seconds(result) == pytest.approx(3, abs=0.2)  # Aleph 2.0 edits the whole clip
    polled = get_response(client, body["taskUUID"]).json()
    assert polled == {"data": [{**item, "status": "success"}]}


def test_one_webhook_per_result_and_the_output_format(client: httpx.Client, media: str, sink: CallbackSink, tmp_path: Path) -> None:
    body = task(media, sink, model="runway:2@1", numberResults=2, outputFormat="WEBM", seed=11, width=640, height=480)
    body["inputs"] = {"video": f"{media}/clip.mp4", "referenceImages": [f"{media}/red.png"]}
    assert post(client, [body]).status_code == 200
    webhooks = sink.wait_for(body["taskUUID"], count=2)
    items = [hook["body"]["data"][0] for hook in webhooks]
    assert len({item["videoUUID"] for item in items}) == 2
    assert sorted(item["seed"] for item in items) == [11, 12]
    for index, item in enumerate(items):
        assert item["videoURL"].endswith(".webm")
        path = tmp_path / f"r{index}.webm"
        fetched = client.get(item["videoURL"])
        assert fetched.headers["content-type"] == "video/webm"
        path.write_bytes(fetched.content)
        assert duration_seconds(path) > 2
    statuses = [entry["status"] for entry in get_response(client, body["taskUUID"]).json()["data"]]
    assert statuses == ["success", "success"]


def test_poll_says_processing_while_the_task_runs(client: httpx.Client, media: str, sink: CallbackSink) -> None:
    client.post("/_sim/config", json={"hold": True}).raise_for_status()
    body = task(media, sink)
    assert post(client, [body]).status_code == 200
    assert get_response(client, body["taskUUID"]).json()["data"] == [{"taskType": "videoInference", "taskUUID": body["taskUUID"], "status": "processing"}]
    client.post("/_sim/config", json={"hold": False}).raise_for_status()
    sink.wait_for(body["taskUUID"])


def test_the_authentication_task_form_is_accepted(client: httpx.Client, media: str, sink: CallbackSink) -> None:
    body = task(media, sink)
    answer = post(client, [{"taskType": "authentication", "apiKey": KEY}, body], key=None)
    assert answer.status_code == 200, answer.text
    assert [item["taskType"] for item in answer.json()["data"]] == ["authentication", "videoInference"]


@pytest.mark.parametrize("key", [None, "wrong"])
def test_a_missing_or_wrong_key_is_refused_with_the_errors_envelope(client: httpx.Client, media: str, sink: CallbackSink, key: str | None) -> None:
    answer = post(client, [task(media, sink)], key=key)
    assert answer.status_code == 401
    assert answer.json()["errors"][0]["code"] == "invalidApiKey"
    assert client.get("/_sim/tasks").json() == []


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"taskUUID": "not-a-uuid"}, "invalidTaskUUID"),
        ({"taskUUID": "6ba7b810-9dad-11d1-80b4-00c04fd430c8"}, "invalidTaskUUID"),  # a v1 UUID
        ({"model": "runway:gen3"}, "invalidModel"),
        ({"positivePrompt": "x" * 1001}, "invalidPositivePrompt"),
        ({"inputs": {}}, "missingVideo"),
        ({"numberResults": 5}, "invalidNumberResults"),
        ({"outputFormat": "GIF"}, "invalidOutputFormat"),
        ({"outputQuality": 10}, "invalidOutputQuality"),
        ({"ttl": 30}, "invalidTtl"),
        ({"width": 1280, "height": 720}, "unsupportedParameter"),  # not an Aleph 2.0 option
        ({"model": "runway:2@1", "width": 1000, "height": 700}, "invalidDimensions"),
        ({"safety": {"mode": "paranoid"}}, "invalidSafety"),
        ({"providerSettings": {"runway": {"contentModeration": {"publicFigureThreshold": "high"}}}}, "invalidProviderSettings"),
    ],
)
def test_invalid_tasks_are_refused_with_a_named_code(client: httpx.Client, media: str, sink: CallbackSink, fields: dict[str, Any], code: str) -> None:
    answer = post(client, [task(media, sink, **fields)])
    assert answer.status_code == 400
    assert code in [error["code"] for error in answer.json()["errors"]]


def test_insufficient_balance_on_demand(client: httpx.Client, media: str, sink: CallbackSink) -> None:
    client.post("/_sim/faults", json=[{"fault": "insufficient_credits", "provider": "runware", "count": 1}]).raise_for_status()
    body = task(media, sink)
    answer = post(client, [body])
    assert answer.status_code == 402
    [error] = answer.json()["errors"]
    assert error["code"] == "insufficientCredits"
    assert error["taskUUID"] == body["taskUUID"]
    assert client.get("/_sim/tasks").json() == []
    logged = client.get("/_sim/requests").json()
    assert [(entry["provider"], entry["http_status"], entry["code"]) for entry in logged] == [("runware", 402, "insufficientCredits")]


def test_a_too_short_video_for_aleph_2_fails_by_webhook_and_poll(client: httpx.Client, media: str, sink: CallbackSink) -> None:
    body = task(media, sink, inputs={"video": f"{media}/short.mp4"})
    assert post(client, [body]).status_code == 200
    [webhook] = sink.wait_for(body["taskUUID"])
    assert webhook["body"]["errors"][0]["code"] == "invalidVideoDuration"
    [item] = get_response(client, body["taskUUID"]).json()["data"]
    assert item["status"] == "error"
    assert item["error"]["code"] == "invalidVideoDuration"


def test_an_unfetchable_frame_image_fails_the_task(client: httpx.Client, media: str, sink: CallbackSink) -> None:
    body = task(media, sink, inputs={"video": f"{media}/clip.mp4", "frameImages": [f"{media}/missing.png"]})
    assert post(client, [body]).status_code == 200
    [webhook] = sink.wait_for(body["taskUUID"])
    assert webhook["body"]["errors"][0]["code"] == "invalidImage"


def test_an_unknown_task_polls_as_not_found(client: httpx.Client) -> None:
    answer = get_response(client, str(uuid.uuid4()))
    assert answer.status_code == 404
    assert answer.json()["errors"][0]["code"] == "taskFailedOrNotFound"


def test_the_body_must_be_an_array(client: httpx.Client, media: str, sink: CallbackSink) -> None:
    answer = client.post("/runware/v1", json=task(media, sink), headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["code"] == "invalidRequestBody"


def test_out_of_order_and_read_timeout_faults(client: httpx.Client, media: str, sink: CallbackSink) -> None:
    rules = [
        {"fault": "early_callback", "match_prompt": "early"},
        {"fault": "stale_callback", "match_prompt": "stale"},
        {"fault": "read_timeout", "match_prompt": "timeout", "delay_seconds": 1.0},
    ]
    client.post("/_sim/faults", json=rules).raise_for_status()
    early = task(media, sink, positivePrompt="early")
    assert post(client, [early]).status_code == 200
    [webhook] = sink.for_task(early["taskUUID"])  # delivered before the acknowledgement
    assert webhook["body"]["data"][0]["videoURL"]

    stale = task(media, sink, positivePrompt="stale", numberResults=2, model="runway:2@1")
    assert post(client, [stale]).status_code == 200
    bodies = [entry["body"] for entry in sink.wait_for(stale["taskUUID"], count=3)]
    assert [item.get("status") for body in bodies for item in body["data"]] == [None, None, "processing"]  # after both results

    held = task(media, sink, positivePrompt="timeout")
    with httpx.Client(base_url=str(client.base_url), timeout=httpx.Timeout(0.3), trust_env=False) as impatient, pytest.raises(httpx.ReadTimeout):
        post(impatient, [held])
    sink.wait_for(held["taskUUID"])  # the task was taken and ran
    assert [entry["status"] for entry in get_response(client, held["taskUUID"]).json()["data"]] == ["success"]
    duplicate = post(client, [held])  # sending it again finds the taskUUID taken
    assert duplicate.status_code == 400 and duplicate.json()["errors"][0]["code"] == "conflictTaskUUID"


def test_a_resubmit_of_a_taken_task_uuid_is_a_conflict_and_creates_no_task(client: httpx.Client, media: str, sink: CallbackSink) -> None:
    first = task(media, sink)
    assert post(client, [first]).status_code == 200
    again = post(client, [{**first, "positivePrompt": "something else"}])
    assert again.status_code == 400
    [error] = again.json()["errors"]
    assert {key: error[key] for key in ("code", "parameter", "taskType", "taskUUID")} == {
        "code": "conflictTaskUUID",
        "parameter": "taskUUID",
        "taskType": "videoInference",
        "taskUUID": first["taskUUID"],
    }
    assert first["taskUUID"] in error["message"]
    tasks = client.get("/_sim/tasks").json()
    assert [(t["taskId"], t["request"]["positivePrompt"]) for t in tasks] == [(first["taskUUID"], first["positivePrompt"])]
    sink.wait_for(first["taskUUID"])  # the first task runs on, untouched


def test_faults_after_create_leave_the_task_and_a_resubmit_finds_it(client: httpx.Client, media: str, sink: CallbackSink) -> None:
    client.post("/_sim/faults", json=[{"fault": "submit_5xx_after_create"}, {"fault": "reset_after_read", "match_prompt": "reset"}]).raise_for_status()
    sent = [task(media, sink) for _ in range(3)]
    answers = [post(client, [body]) for body in sent]
    assert [answer.status_code for answer in answers] == [502, 504, 500]
    assert "<title>502 Bad Gateway</title>" in answers[0].text and "<title>504 Gateway Time-out</title>" in answers[1].text
    assert answers[2].json()["errors"][0] == {
        "code": "internalServerError",
        "message": "An unexpected error occurred. Please try again later.",
        "taskType": "videoInference",
        "taskUUID": sent[2]["taskUUID"],
    }
    reset = task(media, sink, positivePrompt="reset")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        post(client, [reset])

    tasks = {t["taskId"]: t for t in client.get("/_sim/tasks").json()}
    assert {uuid: t["submit_answer"] for uuid, t in tasks.items()} == {
        sent[0]["taskUUID"]: "502 html",
        sent[1]["taskUUID"]: "504 html",
        sent[2]["taskUUID"]: "500 json",
        reset["taskUUID"]: "connection reset",
    }
    assert tasks[reset["taskUUID"]]["faults"] == ["reset_after_read", "submit_5xx_after_create"]  # reset wins: no answer at all
    for body in [*sent, reset]:  # the client's safe way on: poll by its own taskUUID, or resubmit and get a conflict
        sink.wait_for(body["taskUUID"])
        assert [item["status"] for item in get_response(client, body["taskUUID"]).json()["data"]] == ["success"]
        assert post(client, [body]).json()["errors"][0]["code"] == "conflictTaskUUID"
    assert len(client.get("/_sim/tasks").json()) == 4
