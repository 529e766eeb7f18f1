"""The simulator speaks crun.ai's job API (``/crun``) as crun's pages describe.

Real HTTP on 127.0.0.1: the simulator runs in-process, the input clip is made with ffmpeg and
served by a tiny HTTP server, callbacks land on another. Waits poll a condition with a deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from local.client import wait_for
from local.media import duration_seconds, make_clip
from local.simulator.server import SimulatorServer

from .sim_servers import CallbackSink, QuietFiles, serve, sink_handler

pytestmark = pytest.mark.timeout(60)

KEY = "sim-crun-key"
CREATE = "/crun/api/v1/client/job/CreateTask"
TASK_INFO = "/crun/api/v1/client/job/TaskInfo"
MODEL = "runway/gen-4-aleph"


def wait_until(probe: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return value


@pytest.fixture(scope="module")
def media_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("crun-media")
    make_clip(folder / "input.mp4", seconds=7, size="320x240")
    yield from serve(ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietFiles, directory=str(folder))))


@pytest.fixture(scope="module")
def sink() -> Iterator[CallbackSink]:
    found = CallbackSink()
    for url in serve(ThreadingHTTPServer(("127.0.0.1", 0), sink_handler(found))):
        found.url = url
        yield found


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    with SimulatorServer("127.0.0.1", 0) as running:
        yield running


@dataclass
class Crun:
    url: str
    client: httpx.Client
    media: str
    sink: CallbackSink

    def create(self, body: Any, key: str | None = KEY) -> httpx.Response:
        headers = {"x-api-key": key} if key is not None else {}
        return self.client.post(f"{self.url}{CREATE}", json=body, headers=headers)

    def body(self, callback: bool = True, **input_fields: Any) -> dict[str, Any]:
        document: dict[str, Any] = {"model": MODEL, "input": {"prompt": "make it snow", "video_url": f"{self.media}/input.mp4", **input_fields}}
        if callback:
            document["callback_url"] = f"{self.sink.url}/callbacks/crun/job?token=s3cret"
        return document

    def create_ok(self, callback: bool = True, **input_fields: Any) -> str:
        answer = self.create(self.body(callback, **input_fields))
        assert answer.status_code == 200, answer.text
        document = answer.json()
        assert (document["code"], document["message"]) == (200, "success"), answer.text
        task_id: str = document["data"]["task_id"]
        return task_id

    def info(self, task_id: str) -> dict[str, Any]:
        answer = self.client.get(f"{self.url}{TASK_INFO}", params={"task_id": task_id}, headers={"x-api-key": KEY})
        document: dict[str, Any] = answer.json()
        return document

    def sim_task(self, task_id: str) -> dict[str, Any]:
        document: dict[str, Any] = self.client.get(f"{self.url}/_sim/tasks/{task_id}").json()
        return document

    def wait_done(self, task_id: str) -> dict[str, Any]:
        return wait_until(lambda: (t := self.sim_task(task_id))["callback_status"] not in ("pending",) and t["state"] in ("success", "failed") and t, task_id)

    def control(self, method: str, path: str, body: Any = None) -> Any:
        answer = self.client.request(method, f"{self.url}/_sim/{path}", json=body)
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture
def crun(server: SimulatorServer, media_url: str, sink: CallbackSink) -> Iterator[Crun]:
    with httpx.Client(timeout=30, trust_env=False) as client:
        handle = Crun(server.url, client, media_url, sink)
        handle.control("POST", "reset")
        yield handle
        handle.control("POST", "reset")


def test_api_key_header_is_required(crun: Crun) -> None:
    for key in (None, "wrong"):
        answer = crun.create(crun.body(), key=key)
        assert answer.json() == {"code": 401, "message": "Unauthorized - Authentication credentials are missing or invalid", "data": None}
    bearer = crun.client.post(f"{crun.url}{CREATE}", json=crun.body(), headers={"Authorization": f"Bearer {KEY}"})
    assert bearer.json()["code"] == 401  # crun uses x-api-key, not a bearer token
    assert crun.control("GET", "tasks") == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"model": "aleph"}, "model must be runway/gen-4-aleph"),
        ({"model": None}, "model is required"),
        ({"input": None}, "input is required"),
        ({"input": {"video_url": "http://x.test/v.mp4"}}, "input.prompt is required and must be a non-empty string"),
        ({"input": {"prompt": "x"}}, "input.video_url is required and must be an http(s) URL"),
        ({"input": {"prompt": "x" * 1001, "video_url": "http://x.test/v.mp4"}}, "input.prompt must be at most 1000 characters, got 1001"),
        ({"input": {"prompt": "x", "video_url": "http://x.test/v.mp4", "seed": "7"}}, "input.seed must be an integer from 0 to 4294967295"),
        ({"input": {"prompt": "x", "video_url": "http://x.test/v.mp4", "aspect_ratio": "2:1"}}, "input.aspect_ratio must be one of"),
        ({"input": {"prompt": "x", "video_url": "http://x.test/v.mp4", "img_urls": "http://x.test/a.png"}}, "input.img_urls must be a list of http(s) URLs"),
        ({"callback_url": "ftp://x.test/cb"}, "callback_url must be an http(s) URL"),
    ],
)
def test_validation_errors_use_crun_error_body(crun: Crun, change: dict[str, Any], problem: str) -> None:
    body = {**crun.body(), **change}
    body = {name: value for name, value in body.items() if value is not None}
    document = crun.create(body).json()
    assert set(document) == {"code", "message", "errors"}
    assert (document["code"], document["message"]) == (422, "Missing Params or Type Error")
    assert any(error.startswith(problem) for error in document["errors"]), document["errors"]
    assert "msg" not in document


@pytest.mark.parametrize("wrapped", [False, True])
def test_task_runs_edits_and_calls_back_bare_or_wrapped(crun: Crun, wrapped: bool, tmp_path: Path) -> None:
    crun.control("POST", "config", {"crun_callback_wrapped": wrapped})
    task_id = crun.create_ok(aspect_ratio="16:9", seed=7)
    assert task_id.startswith("task_")
    task = crun.wait_done(task_id)
    assert task["callback_shape"] == ("wrapped" if wrapped else "bare")
    [body] = crun.sink.bodies(task_id)
    data = body["data"] if wrapped else body
    if wrapped:
        assert (body["code"], body["message"]) == (200, "success")
    else:
        assert "code" not in body
    assert (data["task_id"], data["status"]) == (task_id, "success")
    assert data["param"]["input"] == {**crun.body(True)["input"], "aspect_ratio": "16:9", "seed": 7}
    [video_url] = data["result"]["media_urls"]
    assert crun.info(task_id)["data"] == data  # the callback is the status query's data object
    result = tmp_path / "result.mp4"
    result.write_bytes(crun.client.get(video_url).content)
    assert duration_seconds(result) <= 5.1


def test_sim_tasks_records_the_request_body_as_received_without_the_key(crun: Crun) -> None:
    task_id = crun.create_ok(callback=False, img_urls=[f"{crun.media}/input.mp4"])
    recorded = crun.sim_task(task_id)
    assert recorded["provider"] == "crun"
    assert recorded["request"] == crun.body(False, img_urls=[f"{crun.media}/input.mp4"])
    assert KEY not in json.dumps(recorded)
    assert wait_until(lambda: crun.info(task_id)["data"]["status"] == "success", "success")


def test_task_info_reports_progress_and_unknown_tasks(crun: Crun) -> None:
    crun.control("POST", "config", {"hold": True})
    task_id = crun.create_ok(callback=False)
    assert wait_until(lambda: crun.info(task_id)["data"]["status"] == "running", "running")
    data = crun.info(task_id)["data"]
    assert data["result"] is None and data["complete_at"] is None
    assert isinstance(data["create_at"], int)
    assert data["param"] == {"model": MODEL, "callback_url": None, "input": crun.body(False)["input"]}
    crun.control("POST", "config", {"hold": False})
    assert wait_until(lambda: crun.info(task_id)["data"]["status"] == "success", "success")
    assert crun.info("task_nope") == {"code": 404, "message": "Task not found: task_nope", "data": None}
    missing = crun.client.get(f"{crun.url}{TASK_INFO}", headers={"x-api-key": KEY}).json()
    assert (missing["code"], missing["errors"]) == (422, ["task_id is required"])


def test_generation_failure_is_status_failed_with_code_501(crun: Crun) -> None:
    crun.control("POST", "faults", [{"fault": "generation_failure", "msg": "Content moderation refused the prompt"}])
    task_id = crun.create_ok()
    crun.wait_done(task_id)
    [body] = crun.sink.bodies(task_id)
    assert body["status"] == "failed"
    assert body["result"] == {"code": 501, "message": "Content moderation refused the prompt", "media_urls": []}
    assert crun.info(task_id)["data"]["result"]["code"] == 501


def test_submit_faults_answer_with_crun_codes(crun: Crun) -> None:
    crun.control("POST", "faults", [{"fault": "submit_429", "count": 1}])
    limited = crun.create(crun.body(False))
    assert limited.status_code == 429
    assert limited.json() == {"code": 429, "message": "Rate Limited - Request limit has been exceeded for this resource", "data": None}
    assert crun.create(crun.body(False)).json()["code"] == 200  # count exhausted

    crun.control("POST", "faults", [{"fault": "insufficient_credits"}])
    poor = crun.create(crun.body(False))
    assert (poor.status_code, poor.json()["code"]) == (200, 402)
    crun.control("POST", "config", {"mirror_http_status": True})
    assert crun.create(crun.body(False)).status_code == 402

    crun.control("POST", "faults", [{"fault": "submit_500", "provider": "kie"}])
    assert crun.create(crun.body(False)).json()["code"] == 200  # the provider filter
    codes = [(entry["provider"], entry["code"]) for entry in crun.control("GET", "requests")]
    assert codes == [("crun", 429), ("crun", 200), ("crun", 402), ("crun", 402), ("crun", 200)]


def test_expired_result_and_foreign_host_faults(crun: Crun) -> None:
    crun.control("POST", "faults", [{"fault": "expired_result"}, {"fault": "foreign_result_host"}])
    task_id = crun.create_ok()
    crun.wait_done(task_id)
    [body] = crun.sink.bodies(task_id)
    assert body["result"]["media_urls"] == ["https://169.254.169.254/latest/meta-data"]
    [own_url] = crun.info(task_id)["data"]["result"]["media_urls"]
    assert crun.client.get(own_url).status_code == 404


def test_out_of_order_and_read_timeout_faults(crun: Crun) -> None:
    crun.control(
        "POST",
        "faults",
        [
            {"fault": "early_callback", "match_prompt": "early"},
            {"fault": "stale_callback", "match_prompt": "stale"},
            {"fault": "read_timeout", "match_prompt": "timeout", "delay_seconds": 1.0},
        ],
    )
    early = crun.create_ok(prompt="early")
    [body] = crun.sink.bodies(early)  # already delivered when the answer came
    assert (body["task_id"], body["status"]) == (early, "success")

    stale = crun.create_ok(prompt="stale")
    wait_until(lambda: len(crun.sink.bodies(stale)) == 2, "the final and the stale callback")
    final, late = crun.sink.bodies(stale)
    assert final["status"] == "success" and final["result"]["media_urls"]
    assert (late["task_id"], late["status"], late["result"]) == (stale, "running", None)
    assert crun.info(stale)["data"]["status"] == "success"

    with httpx.Client(timeout=httpx.Timeout(0.3), trust_env=False) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post(f"{crun.url}{CREATE}", json=crun.body(prompt="timeout"), headers={"x-api-key": KEY})
    [held] = [task for task in crun.control("GET", "tasks") if task["request"]["input"]["prompt"] == "timeout"]
    assert crun.wait_done(held["taskId"])["state"] == "success"
    assert [body["status"] for body in crun.sink.bodies(held["taskId"])] == ["success"]


def test_faults_after_create_leave_a_task_behind_the_failed_answer(crun: Crun) -> None:
    crun.control("POST", "faults", [{"fault": "submit_5xx_after_create", "match_prompt": "gateway"}, {"fault": "reset_after_read", "match_prompt": "reset"}])
    answers = [crun.create(crun.body(prompt=f"gateway {index}")) for index in range(3)]
    assert [answer.status_code for answer in answers] == [502, 504, 500]
    assert "<title>502 Bad Gateway</title>" in answers[0].text and "<title>504 Gateway Time-out</title>" in answers[1].text
    assert answers[2].json() == {"code": 500, "message": "Server Error - An unexpected error occurred while processing the request", "data": None}
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        crun.create(crun.body(prompt="reset"))

    tasks = crun.control("GET", "tasks")
    assert [(task["request"]["input"]["prompt"], task["submit_answer"]) for task in tasks] == [
        ("gateway 0", "502 html"),
        ("gateway 1", "504 html"),
        ("gateway 2", "500 json"),
        ("reset", "connection reset"),
    ]
    for task in tasks:  # every one runs and calls back: the provider will charge for it
        assert crun.wait_done(task["taskId"])["state"] == "success"
        assert [body["status"] for body in crun.sink.bodies(task["taskId"])] == ["success"]


# ---- read at run time: the model's input_schema and EstimateTask, through the product's adapter ----


def adapter(crun: Crun) -> Any:
    from aleph_pipeline.providers.crun import CrunProtocol

    return CrunProtocol(
        id="crun",
        base_url=f"{crun.url}/crun",
        api_key=lambda: KEY,
        http=httpx.Client(timeout=30, trust_env=False),
        models=(MODEL,),
        default_result_hosts=("127.0.0.1",),
    )


def submit_request(crun: Crun, document: dict[str, Any]) -> Any:
    from aleph_pipeline.providers.base import SubmitRequest
    from aleph_pipeline.sidecar import parse_sidecar

    sidecar, _ = parse_sidecar(json.dumps(document).encode())
    return sidecar, SubmitRequest("j" * 32, sidecar, MODEL, f"{crun.media}/input.mp4", (), f"{crun.sink.url}/callbacks/crun/j?token=t")


def test_the_model_schema_refuses_a_field_at_intake_and_nothing_is_created(crun: Crun) -> None:
    from aleph_pipeline.errors import JobError

    model = crun.client.get(f"{crun.url}/crun/api/v1/client/job/Models/{MODEL}", headers={"x-api-key": KEY}).json()
    assert set(model["data"]["input_schema"]["properties"]) == {"prompt", "video_url", "img_urls", "aspect_ratio", "seed"}
    sidecar, _ = submit_request(crun, {"prompt": "snow", "providerOptions": {"duration": 5}})
    with pytest.raises(JobError) as caught:
        adapter(crun).check(sidecar, MODEL, None)
    assert caught.value.code == "unsupported_option" and "`duration`" in caught.value.message
    assert crun.control("GET", "tasks") == []


def test_an_unaffordable_estimate_creates_nothing_and_an_affordable_one_precedes_create_task(crun: Crun) -> None:
    from aleph_pipeline.errors import JobError

    # A request an earlier test left held (read_timeout) is logged when it ends: wait for a quiet log.
    seen: list[int] = []

    def quiet() -> bool:
        seen.append(len(crun.control("GET", "requests")))
        return len(seen) >= 4 and len(set(seen[-4:])) == 1

    wait_for(quiet, timeout=15, interval=0.5, message="the simulator's request log to be quiet")
    crun.control("DELETE", "requests")
    crun.control("POST", "faults", [{"fault": "insufficient_credits", "count": 1}])
    _, request = submit_request(crun, {"prompt": "snow"})
    with pytest.raises(JobError) as caught:
        adapter(crun).submit(request)
    assert caught.value.code == "insufficient_credits" and "costs 60 credits" in caught.value.message
    assert crun.control("GET", "tasks") == []
    task_id = adapter(crun).submit(request)  # the fault is used up: affordable now
    assert crun.wait_done(task_id)["state"] == "success"
    paths = [entry["path"].split("?")[0] for entry in crun.control("GET", "requests") if "/crun/" in entry["path"]]
    assert [path.rsplit("/", 1)[-1] for path in paths[-3:]] == ["gen-4-aleph", "EstimateTask", "CreateTask"]


def estimates_logged(crun: Crun) -> int:
    return len([entry for entry in crun.control("GET", "requests") if "EstimateTask" in entry["path"]])


def test_the_budget_s_estimate_and_the_check_before_create_task_are_one_estimate_call(crun: Crun, monkeypatch: pytest.MonkeyPatch) -> None:
    from aleph_pipeline.providers.base import VideoInfo
    from aleph_pipeline.providers.crun import CrunProtocol

    monkeypatch.setattr(CrunProtocol, "price_rule", lambda self, model: {"creditUsd": 0.01})
    sidecar, request = submit_request(crun, {"prompt": "rain"})
    before = estimates_logged(crun)
    provider = adapter(crun)
    assert provider.estimate_cost(sidecar, MODEL, VideoInfo("mp4", None, url=request.video_url)) == 0.6  # 60 credits
    task_id = provider.submit(request)
    assert crun.wait_done(task_id)["state"] == "success"
    assert estimates_logged(crun) - before == 1
    assert adapter(crun).submit(request) != task_id  # another process quotes again: a quote is per process
    wait_for(lambda: estimates_logged(crun) - before == 2, timeout=10, interval=0.1, message="the second process's estimate in the log")
