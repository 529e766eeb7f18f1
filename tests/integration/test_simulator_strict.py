"""The simulator refuses what the providers' documents do not allow, and results come in the
container asked for; finalize refuses a result in another container (real HTTP, moto server)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from http.server import ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from aleph_pipeline.errors import JobError
from aleph_pipeline.finalize import finalize_job
from aleph_pipeline.jobs import JobStore
from aleph_pipeline.providers import Provider, ProviderError, SubmitRequest
from aleph_pipeline.providers.crun import CrunProtocol
from aleph_pipeline.providers.kie import KieProtocol
from aleph_pipeline.providers.runware import RunwareProtocol
from aleph_pipeline.sidecar import parse_sidecar
from local.media import make_clip
from local.simulator.server import SimulatorServer

from .conftest import clear_caches
from .sim_servers import CallbackSink, QuietFiles, serve, sink_handler
from .test_simulator import wait_until

pytestmark = pytest.mark.timeout(90)

KEYS = {"kie": "sim-kie-key", "apikley": "sim-apikley-key", "runware": "sim-runware-key", "crun": "sim-crun-key"}
GENERATE = "/api/v1/aleph/generate"
RECORD_INFO = "/api/v1/aleph/record-info"
JOB_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def media_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("strict-media")
    make_clip(folder / "clip.mp4", seconds=2.5, size="160x90", rate=12)
    yield from serve(ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietFiles, directory=str(folder))))


@pytest.fixture(scope="module")
def sink() -> Iterator[CallbackSink]:
    receiver = CallbackSink()
    for url in serve(ThreadingHTTPServer(("127.0.0.1", 0), sink_handler(receiver))):
        receiver.url = url
        yield receiver


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    with SimulatorServer("127.0.0.1", 0) as running:
        yield running


@pytest.fixture
def client(server: SimulatorServer, sink: CallbackSink) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as http:
        http.post("/_sim/reset").raise_for_status()
        sink.clear()
        yield http
        http.post("/_sim/reset")


def tasks(client: httpx.Client) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = client.get("/_sim/tasks").json()
    return listed


def kie_body(media_url: str, **fields: Any) -> dict[str, Any]:
    return {"prompt": "make it snow", "videoUrl": f"{media_url}/clip.mp4", **fields}


def kie_generate(client: httpx.Client, provider: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(f"/{provider}{GENERATE}", json=body, headers={"Authorization": f"Bearer {KEYS[provider]}"})


def runware_task(media_url: str, sink: CallbackSink, **fields: Any) -> dict[str, Any]:
    return {
        "taskType": "videoInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "runway:aleph@2.0",
        "positivePrompt": "make it snow",
        "deliveryMethod": "async",
        "webhookURL": f"{sink.url}/callbacks/runware/job?token=t",
        "inputs": {"video": f"{media_url}/clip.mp4"},
        **fields,
    }


def runware_post(client: httpx.Client, body: list[dict[str, Any]]) -> httpx.Response:
    return client.post("/runware/v1", json=body, headers={"Authorization": f"Bearer {KEYS['runware']}"})


# ---- refusals: each provider's own answer, and no task ------------------------------------------


@pytest.mark.parametrize("provider", ["kie", "apikley"])
@pytest.mark.parametrize(
    ("change", "shown"),
    [
        ({"watermark": "w"}, "unknown field `watermark` (did you mean `waterMark`?)"),
        ({"referenceImages": ["https://img.test/a.png"]}, "unknown field `referenceImages` (did you mean `referenceImage`?)"),
        ({"numberResults": 2}, "unknown field `numberResults` (known fields: aspectRatio, callBackUrl, prompt,"),
        ({"callbackUrl": "https://cb.test/x"}, "unknown field `callbackUrl` (did you mean `callBackUrl`?)"),
    ],
)
def test_kie_protocol_refuses_an_undocumented_field_with_a_422_in_the_body(
    client: httpx.Client, media_url: str, provider: str, change: dict[str, Any], shown: str
) -> None:
    answer = kie_generate(client, provider, kie_body(media_url, **change))
    assert answer.status_code == 200  # kie reports the status in the body
    document = answer.json()
    assert (document["code"], document["data"]) == (422, None)
    assert shown in document["msg"]
    assert tasks(client) == []


def test_apikley_answers_record_detail_like_a_path_it_does_not_have_and_polls_on_record_info(client: httpx.Client, media_url: str) -> None:
    accepted = kie_generate(client, "apikley", kie_body(media_url, waterMark=""))
    assert accepted.json()["code"] == 200, accepted.text
    task_id = accepted.json()["data"]["taskId"]
    auth = {"Authorization": f"Bearer {KEYS['apikley']}"}
    detail = client.get("/apikley/api/v1/aleph/record-detail", params={"taskId": task_id}, headers=auth)
    assert detail.status_code == 404
    assert (detail.json()["code"], detail.json()["data"]) == (404, None)
    info = client.get(f"/apikley{RECORD_INFO}", params={"taskId": task_id}, headers=auth)
    assert info.status_code == 200
    assert (info.json()["code"], info.json()["data"]["taskId"]) == (200, task_id)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"callBackUrl": "https://cb.test/x"}, "unknown field `callBackUrl` (did you mean `callback_url`?)"),
        ({"webhook_url": "https://cb.test/x"}, "unknown field `webhook_url`"),
        ({"input": {"duration": 5}}, "unknown field `input.duration`"),
        ({"input": {"imageUrls": ["https://img.test/a.png"]}}, "unknown field `input.imageUrls`"),
    ],
)
def test_crun_refuses_fields_outside_its_table_with_its_422(client: httpx.Client, media_url: str, change: dict[str, Any], named: str) -> None:
    body: dict[str, Any] = {"model": "runway/gen-4-aleph", "input": {"prompt": "make it snow", "video_url": f"{media_url}/clip.mp4"}}
    for name, value in change.items():
        if name == "input":
            body["input"].update(value)
        else:
            body[name] = value
    answer = client.post("/crun/api/v1/client/job/CreateTask", json=body, headers={"x-api-key": KEYS["crun"]})
    document = answer.json()
    assert (document["code"], document["message"]) == (422, "Missing Params or Type Error")
    assert any(error.startswith(named) for error in document["errors"]), document["errors"]
    assert tasks(client) == []


MODERATION = {"publicFigureThreshold": "low"}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"webhookUrl": "https://cb.test/x"}, ("unsupportedParameter", "webhookUrl")),
        ({"watermark": "w"}, ("unsupportedParameter", "watermark")),
        ({"providerSettings": {"runway": {"contentModeration": MODERATION, "mode": 1}}}, ("unsupportedParameter", "providerSettings.runway.mode")),
        ({"providerSettings": {"runway": {"contentModeration": {"x": 2}}}}, ("unsupportedParameter", "providerSettings.runway.contentModeration.x")),
        ({"providerSettings": {"kling": {}}}, ("unsupportedParameter", "providerSettings.kling")),
        ({"providerSettings": {"runway": "auto"}}, ("invalidProviderSettings", "providerSettings.runway")),
    ],
)
def test_runware_refuses_undocumented_fields_and_provider_settings(
    client: httpx.Client, media_url: str, sink: CallbackSink, change: dict[str, Any], expected: tuple[str, str]
) -> None:
    answer = runware_post(client, [runware_task(media_url, sink, **change)])
    assert answer.status_code == 400
    errors = answer.json()["errors"]
    assert [(error["code"], error["parameter"]) for error in errors] == [expected]
    assert expected[1] in errors[0]["message"]
    assert tasks(client) == []


def test_runware_names_the_documented_field_for_a_near_miss(client: httpx.Client, media_url: str, sink: CallbackSink) -> None:
    answer = runware_post(client, [runware_task(media_url, sink, webhookUrl="https://cb.test/x")])
    assert "did you mean webhookURL" in answer.json()["errors"][0]["message"]


def test_runware_takes_its_documented_provider_setting(client: httpx.Client, media_url: str, sink: CallbackSink) -> None:
    body = runware_task(media_url, sink, providerSettings={"runway": {"contentModeration": MODERATION}})
    assert runware_post(client, [body]).status_code == 200
    sink.wait_for(body["taskUUID"])


# ---- results in the container asked for --------------------------------------------------------

MAGIC = {"MP4": (b"ftyp", b"isom"), "MOV": (b"ftyp", b"qt  ")}


def runware_result(client: httpx.Client, media_url: str, sink: CallbackSink, **fields: Any) -> tuple[str, bytes]:
    body = runware_task(media_url, sink, **fields)
    assert runware_post(client, [body]).status_code == 200
    [webhook] = sink.wait_for(body["taskUUID"])
    url: str = webhook["body"]["data"][0]["videoURL"]
    fetched = client.get(url)
    assert fetched.status_code == 200
    return url, fetched.content


@pytest.mark.parametrize("output_format", ["MP4", "WEBM", "MOV"])
def test_runware_results_come_in_the_container_asked_for(client: httpx.Client, media_url: str, sink: CallbackSink, output_format: str) -> None:
    url, content = runware_result(client, media_url, sink, outputFormat=output_format)
    assert url.endswith("." + output_format.lower())
    if output_format == "WEBM":
        assert content[:4] == b"\x1a\x45\xdf\xa3"  # EBML
        assert b"webm" in content[:64]  # the DocType
    else:
        box, brand = MAGIC[output_format]
        assert (content[4:8], content[8:12]) == (box, brand)


def test_runware_wrong_container_fault_sends_mp4_for_webm(client: httpx.Client, media_url: str, sink: CallbackSink) -> None:
    client.post("/_sim/faults", json=[{"fault": "wrong_container", "provider": "runware"}]).raise_for_status()
    url, content = runware_result(client, media_url, sink, outputFormat="WEBM")
    assert url.endswith(".webm")
    assert (content[4:8], content[8:12]) == (b"ftyp", b"isom")


@pytest.mark.parametrize("provider", ["kie", "crun"])
def test_wrong_container_fault_sends_webm_for_an_mp4_result(client: httpx.Client, media_url: str, provider: str) -> None:
    client.post("/_sim/faults", json=[{"fault": "wrong_container", "provider": provider}]).raise_for_status()
    if provider == "kie":
        answer = kie_generate(client, "kie", kie_body(media_url))
    else:
        body = {"model": "runway/gen-4-aleph", "input": {"prompt": "make it snow", "video_url": f"{media_url}/clip.mp4"}}
        answer = client.post("/crun/api/v1/client/job/CreateTask", json=body, headers={"x-api-key": KEYS["crun"]})
    assert answer.json()["code"] == 200, answer.text

    def done() -> dict[str, Any] | None:
        [task] = tasks(client)
        return task if task["state"] in ("success", "failed") else None

    task = wait_until(done, "the task to end")
    assert (task["state"], task["faults"]) == ("success", ["wrong_container"])
    url = task["result_urls"]["video"]
    assert url.endswith(".mp4")
    assert client.get(url).content[:4] == b"\x1a\x45\xdf\xa3"  # WebM's EBML header under an .mp4 name


# ---- finalize refuses a result in another container (moto server, the simulator's result) -----


@pytest.fixture
def runware_env(aws: dict[str, Any], server: SimulatorServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("RESULT_HOSTS", json.dumps({"runware": ["127.0.0.1"]}))
    monkeypatch.setenv("ALLOW_HTTP_RESULT_URLS", "true")
    monkeypatch.setenv("CONFIRM_RESULTS_BY_POLLING", "false")  # this is about the bytes, not the confirmation
    clear_caches()
    return aws


def succeeded_job(aws: dict[str, Any], video_url: str, output_format: str) -> str:
    prefix = f"shots/one/{JOB_ID}/"
    aws["table"].put_item(
        Item={
            "jobId": JOB_ID,
            "status": "SUCCEEDED",
            "provider": "runware",
            "model": "runway:aleph@2.0",
            "outputPrefix": prefix,
            "sidecarJson": json.dumps({"prompt": "snow", "provider": "runware", "outputFormat": output_format}),
            "result": {"videos": [video_url]},
            "history": [{"state": "RECEIVED", "at": "t0"}, {"state": "SUBMITTED", "at": "t1"}, {"state": "SUCCEEDED", "at": "t2"}],
            "createdAt": "t0",
            "updatedAt": "t2",
        }
    )
    return prefix


def output_keys(aws: dict[str, Any], prefix: str) -> list[str]:
    return sorted(entry["Key"].removeprefix(prefix) for entry in aws["s3"].list_objects_v2(Bucket=aws["output"], Prefix=prefix).get("Contents", []))


def test_finalize_fails_a_job_whose_result_is_mp4_for_a_webm_request(
    runware_env: dict[str, Any], client: httpx.Client, media_url: str, sink: CallbackSink
) -> None:
    client.post("/_sim/faults", json=[{"fault": "wrong_container", "provider": "runware"}]).raise_for_status()
    url, _ = runware_result(client, media_url, sink, outputFormat="WEBM")
    prefix = succeeded_job(runware_env, url, "WEBM")
    finalize_job(JOB_ID)
    job = JobStore().get(JOB_ID)
    assert job is not None
    assert job.state.value == "FAILED"
    assert output_keys(runware_env, prefix) == ["error.json"]  # nothing named result.webm, not even for a moment
    error = json.loads(runware_env["s3"].get_object(Bucket=runware_env["output"], Key=prefix + "error.json")["Body"].read())
    assert (error["code"], error["stage"], error["retryable"]) == ("result_format_mismatch", "finalize", False)
    assert error["details"]["requestedFormat"] == "WEBM" and error["details"]["receivedFormat"] == "MP4"
    assert "MP4" in error["message"] and "WebM" in error["message"]
    assert error["hint"]
    assert runware_env["s3"].list_multipart_uploads(Bucket=runware_env["output"]).get("Uploads", []) == []


def test_finalize_names_a_webm_result_result_webm(runware_env: dict[str, Any], client: httpx.Client, media_url: str, sink: CallbackSink) -> None:
    url, content = runware_result(client, media_url, sink, outputFormat="WEBM")
    prefix = succeeded_job(runware_env, url, "WEBM")
    finalize_job(JOB_ID)
    job = JobStore().get(JOB_ID)
    assert job is not None
    assert job.state.value == "COMPLETED"
    assert output_keys(runware_env, prefix) == ["job.json", "result.webm"]
    copied = runware_env["s3"].get_object(Bucket=runware_env["output"], Key=prefix + "result.webm")
    assert copied["Body"].read() == content
    assert copied["ContentType"] == "video/webm"


# ---- the pipeline's own clients: documented requests pass, an escape hatch the provider refuses fails clearly


def adapter(provider_id: str, server: SimulatorServer, http: httpx.Client) -> Provider:
    constructor: dict[str, Callable[..., Provider]] = {"kie": KieProtocol, "apikley": KieProtocol, "runware": RunwareProtocol, "crun": CrunProtocol}
    return constructor[provider_id](
        id=provider_id,
        base_url=f"{server.url}/{provider_id}",
        api_key=lambda: KEYS[provider_id],
        http=http,
        models=MODELS[provider_id],
        default_result_hosts=("127.0.0.1",),
    )


MODELS = {"kie": ("aleph",), "apikley": ("aleph",), "runware": ("runway:aleph@2.0", "runway:2@1"), "crun": ("runway/gen-4-aleph",)}
# Per provider: a sidecar using every field the adapter maps, and an undocumented field passed through providerOptions.
SIDECARS = {
    "kie": ({"aspectRatio": "16:9", "seed": 7, "watermark": ""}, {"watermark": "w"}),
    "apikley": ({"aspectRatio": "1:1", "seed": 7}, {"numberResults": 2}),
    "runware": ({"outputFormat": "WEBM", "seed": 7, "publicFigureThreshold": "low", "outputQuality": 50}, {"watermark": True}),
    "crun": ({"aspectRatio": "16:9", "seed": 7}, {"duration": 5}),
}


def submit_request(provider_id: str, sink: CallbackSink, media_url: str, document: dict[str, Any]) -> SubmitRequest:
    sidecar, _ = parse_sidecar(json.dumps({"prompt": "make it snow", "provider": provider_id, **document}).encode())
    return SubmitRequest(uuid.uuid4().hex, sidecar, MODELS[provider_id][0], f"{media_url}/clip.mp4", (), f"{sink.url}/callbacks/{provider_id}/job?token=t")


@pytest.mark.parametrize("provider_id", ["kie", "apikley", "runware", "crun"])
def test_the_clients_documented_request_is_accepted(
    server: SimulatorServer, client: httpx.Client, media_url: str, sink: CallbackSink, provider_id: str
) -> None:
    with httpx.Client(timeout=10, trust_env=False) as http:
        provider = adapter(provider_id, server, http)
        task_id = provider.submit(submit_request(provider_id, sink, media_url, SIDECARS[provider_id][0]))
    assert [task["taskId"] for task in tasks(client)] == [task_id]
    sink.wait_for(task_id)


@pytest.mark.parametrize("provider_id", ["kie", "apikley", "runware"])
def test_an_undocumented_provider_option_is_a_clear_refusal(
    server: SimulatorServer, client: httpx.Client, media_url: str, sink: CallbackSink, provider_id: str
) -> None:
    extra = SIDECARS[provider_id][1]
    with httpx.Client(timeout=10, trust_env=False) as http, pytest.raises(ProviderError) as caught:
        adapter(provider_id, server, http).submit(submit_request(provider_id, sink, media_url, {"providerOptions": extra}))
    error = caught.value.to_job_error()
    assert (caught.value.kind, error.code, error.retryable) == ("refused", "provider_rejected", False)
    [name] = extra
    assert name in error.message
    assert tasks(client) == []


def test_crun_refuses_an_undocumented_provider_option_at_intake_from_its_own_schema(
    server: SimulatorServer, client: httpx.Client, media_url: str, sink: CallbackSink
) -> None:
    """crun's fields are read from its model's input_schema: the pipeline refuses what the schema
    does not list before anything is sent (crun itself would answer 422, as the test above shows
    for the others)."""
    extra = SIDECARS["crun"][1]
    with httpx.Client(timeout=10, trust_env=False) as http, pytest.raises(JobError) as caught:
        adapter("crun", server, http).submit(submit_request("crun", sink, media_url, {"providerOptions": extra}))
    [name] = extra
    assert (caught.value.code, caught.value.retryable) == ("unsupported_option", False)
    assert name in caught.value.message and "input_schema permits" in caught.value.message
    assert tasks(client) == []
