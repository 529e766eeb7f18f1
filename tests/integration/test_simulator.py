"""The provider simulator speaks the kie.ai / apikley Aleph protocol as the provider pages describe.

Real HTTP on 127.0.0.1 throughout: the simulator runs in-process, the input video is made with
the ffmpeg binary and served by a tiny HTTP server, and callbacks land on another tiny server.
Waits poll a condition with a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import imageio_ffmpeg
import pytest

from local.simulator.editor import MSG_SERVER_ERROR
from local.simulator.server import SimulatorServer

from .sim_servers import WAIT_SECONDS, CallbackSink, QuietFiles, serve, sink_handler

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
KIE_KEY = "sim-kie-key"
APIKLEY_KEY = "sim-apikley-key"
KEYS = {"kie": KIE_KEY, "apikley": APIKLEY_KEY}
GENERATE = "/api/v1/aleph/generate"
RECORD_INFO = "/api/v1/aleph/record-info"

T = TypeVar("T")


def wait_until(probe: Callable[[], T | Literal[False] | None], what: str, timeout: float = WAIT_SECONDS) -> T:
    """Poll ``probe`` until it returns something truthy, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    subprocess.run(
        [
            *(FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=24", "-t", "7"),
            *("-c:v", "libx264", "-pix_fmt", "yuv420p", str(folder / "input.mp4")),
        ],
        check=True,
        capture_output=True,
    )
    (folder / "big.mp4").write_bytes(os.urandom(11 * 1024 * 1024))  # over the 10 MB limit
    (folder / "garbage.mp4").write_bytes(b"this is not a video\n" * 100)
    return folder


@pytest.fixture(scope="module")
def media_url(media_dir: Path) -> Iterator[str]:
    yield from serve(ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietFiles, directory=str(media_dir))))


@pytest.fixture(scope="module")
def sink_server() -> Iterator[CallbackSink]:
    sink = CallbackSink()
    for url in serve(ThreadingHTTPServer(("127.0.0.1", 0), sink_handler(sink))):
        sink.url = url
        yield sink


@pytest.fixture(scope="module")
def sim_server() -> Iterator[SimulatorServer]:
    server = SimulatorServer("127.0.0.1", 0).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Sim:
    url: str
    client: httpx.Client
    media: str
    sink: CallbackSink

    def submit(self, body: Any, provider: str = "kie", key: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or KEYS[provider]}"}
        return self.client.post(f"{self.url}/{provider}{GENERATE}", json=body, headers=headers)

    def submit_ok(self, provider: str = "kie", **fields: Any) -> str:
        body = {"prompt": "make it look like a negative", "videoUrl": f"{self.media}/input.mp4", **fields}
        answer = self.submit(body, provider)
        assert answer.status_code == 200, answer.text
        assert answer.json()["code"] == 200, answer.text
        task_id: str = answer.json()["data"]["taskId"]
        return task_id

    def record_info(self, task_id: str, provider: str = "kie") -> dict[str, Any]:
        answer = self.client.get(f"{self.url}/{provider}{RECORD_INFO}", params={"taskId": task_id}, headers={"Authorization": f"Bearer {KEYS[provider]}"})
        assert answer.status_code == 200
        result: dict[str, Any] = answer.json()
        return result

    def task(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.client.get(f"{self.url}/_sim/tasks/{task_id}").json()
        return result

    def wait_state(self, task_id: str, *states: str) -> dict[str, Any]:
        return wait_until(lambda: (t := self.task(task_id))["state"] in states and t, f"task {task_id} in {states}")

    def wait_until_answered(self, task_id: str) -> dict[str, Any]:
        return wait_until(lambda: (t := self.task(task_id))["answered_at"] is not None and t, f"the submit answer of {task_id}")

    def wait_callbacks_done(self, task_id: str) -> dict[str, Any]:
        return wait_until(lambda: (t := self.task(task_id))["callback_status"] != "pending" and t, f"callbacks of {task_id}")

    def control(self, method: str, path: str, body: Any = None) -> Any:
        answer = self.client.request(method, f"{self.url}/_sim/{path}", json=body)
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture
def sim(sim_server: SimulatorServer, media_url: str, sink_server: CallbackSink) -> Iterator[Sim]:
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        helper = Sim(sim_server.url, client, media_url, sink_server)
        helper.control("POST", "reset")
        sink_server.clear()
        yield helper
        helper.control("POST", "reset")  # also releases any held worker


# ---- media checks -------------------------------------------------------------------------------


def duration_seconds(path: Path) -> float:
    probe = subprocess.run([FFMPEG, "-hide_banner", "-i", str(path)], capture_output=True, text=True, check=False)
    match = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", probe.stderr)
    assert match, probe.stderr
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def frame_rgb(path: Path, at: float = 1.0) -> bytes:
    grab = subprocess.run(
        [
            *(FFMPEG, "-hide_banner", "-loglevel", "error", "-ss", str(at), "-i", str(path)),
            *("-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "64x48", "-"),
        ],
        capture_output=True,
        check=True,
    )
    assert len(grab.stdout) == 64 * 48 * 3
    return grab.stdout


def download(client: httpx.Client, url: str, dest: Path) -> Path:
    answer = client.get(url)
    assert answer.status_code == 200, (url, answer.status_code)
    dest.write_bytes(answer.content)
    return dest


def assert_edited_video(client: httpx.Client, video_url: str, image_url: str, media_dir: Path, tmp_path: Path) -> None:
    video = download(client, video_url, tmp_path / "out.mp4")
    decode = subprocess.run([FFMPEG, "-v", "error", "-i", str(video), "-f", "null", "-"], capture_output=True, text=True, check=False)
    assert decode.returncode == 0 and not decode.stderr.strip(), decode.stderr
    assert duration_seconds(media_dir / "input.mp4") > 6.5
    assert duration_seconds(video) <= 5.1
    before, after = frame_rgb(media_dir / "input.mp4"), frame_rgb(video)
    mean_abs_diff = sum(abs(a - b) for a, b in zip(before, after, strict=True)) / len(before)
    assert mean_abs_diff > 60, mean_abs_diff
    cover = client.get(image_url)
    assert cover.status_code == 200
    assert cover.content.startswith(b"\x89PNG\r\n\x1a\n")


# ---- protocol -----------------------------------------------------------------------------------


def test_auth_is_refused_without_the_right_bearer_key(sim: Sim) -> None:
    body = {"prompt": "p", "videoUrl": f"{sim.media}/input.mp4"}
    url = f"{sim.url}/kie{GENERATE}"
    missing = sim.client.post(url, json=body)
    wrong = sim.client.post(url, json=body, headers={"Authorization": "Bearer nope"})
    not_bearer = sim.client.post(url, json=body, headers={"Authorization": KIE_KEY})
    other_provider = sim.submit(body, "apikley", key=KIE_KEY)
    for answer in (missing, wrong, not_bearer, other_provider):
        # kie reports the status in the body; the HTTP status stays 200.
        assert answer.status_code == 200
        assert answer.json()["code"] == 401 and answer.json()["data"] is None
    poll = sim.client.get(f"{sim.url}/kie{RECORD_INFO}", params={"taskId": "x"})
    assert poll.json()["code"] == 401
    assert sim.control("GET", "tasks") == []


@pytest.mark.parametrize(
    ("change", "field_name", "code"),
    [
        ({"prompt": None}, "prompt", 422),
        ({"prompt": ""}, "prompt", 422),
        ({"prompt": 12}, "prompt", 422),
        ({"prompt": "x" * 2049}, "prompt", 422),
        ({"videoUrl": None}, "videoUrl", 422),
        ({"videoUrl": ["http://x/y.mp4"]}, "videoUrl", 422),
        ({"videoUrl": "s3://bucket/key.mp4"}, "videoUrl", 422),
        ({"callBackUrl": 5}, "callBackUrl", 422),
        ({"waterMark": False}, "waterMark", 422),
        ({"uploadCn": "false"}, "uploadCn", 422),
        ({"aspectRatio": "2:1"}, "aspectRatio", 422),
        ({"seed": "123"}, "seed", 422),
        ({"seed": 1.5}, "seed", 422),
        ({"referenceImage": 1}, "referenceImage", 422),
    ],
)
def test_validation_errors_name_the_field(sim: Sim, change: dict[str, Any], field_name: str, code: int) -> None:
    body = {"prompt": "p", "videoUrl": f"{sim.media}/input.mp4", **change}
    body = {k: v for k, v in body.items() if v is not None}
    answer = sim.submit(body)
    assert answer.status_code == 200
    assert answer.json()["code"] == code
    assert field_name in answer.json()["msg"]
    assert answer.json()["data"] is None


def test_malformed_json_is_a_400(sim: Sim) -> None:
    answer = sim.client.post(
        f"{sim.url}/kie{GENERATE}", content=b'{"prompt": ', headers={"Authorization": f"Bearer {KIE_KEY}", "Content-Type": "application/json"}
    )
    assert answer.status_code == 200 and answer.json()["code"] == 400
    assert sim.control("GET", "tasks") == []


def test_task_completes_and_calls_back_in_shape_a(sim: Sim, media_dir: Path, tmp_path: Path) -> None:
    callback = f"{sim.sink.url}/callbacks/kie/job-1?token=s3cret"
    task_id = sim.submit_ok(callBackUrl=callback, aspectRatio="16:9", seed=7, waterMark="", uploadCn=False)
    [received] = sim.sink.wait_for(task_id)
    body = received["body"]
    assert received["path"] == "/callbacks/kie/job-1?token=s3cret"
    assert received["headers"]["Content-Type"] == "application/json"
    assert set(body) == {"code", "msg", "data", "taskId"}
    assert body["code"] == 200 and body["msg"] == "success" and body["taskId"] == task_id
    assert set(body["data"]) == {"result_video_url", "result_image_url"}
    assert_edited_video(sim.client, body["data"]["result_video_url"], body["data"]["result_image_url"], media_dir, tmp_path)

    info = sim.record_info(task_id)
    assert info["code"] == 200
    data = info["data"]
    assert data["successFlag"] == 1 and data["errorMessage"] == "" and data["expireFlag"] == 0
    assert data["response"] == {
        "taskId": task_id,
        "resultVideoUrl": body["data"]["result_video_url"],
        "resultImageUrl": body["data"]["result_image_url"],
    }
    assert isinstance(data["paramJson"], str)
    assert json.loads(data["paramJson"])["callBackUrl"] == callback
    assert data["createTime"].endswith("Z") and data["completeTime"].endswith("Z")

    task = sim.wait_callbacks_done(task_id)
    [attempt] = task["callbacks"]
    assert attempt["status"] == 200
    assert "s3cret" not in attempt["url"] and "token=" in attempt["url"]
    assert attempt["body"] == body


def test_task_calls_back_in_shape_b_when_configured(sim: Sim, media_dir: Path, tmp_path: Path) -> None:
    sim.control("POST", "config", {"callback_shape": "B"})
    task_id = sim.submit_ok(callBackUrl=f"{sim.sink.url}/cb")
    [received] = sim.sink.wait_for(task_id)
    body = received["body"]
    assert set(body) == {"code", "msg", "data"}
    assert body["code"] == 200 and body["msg"] == "All generated successfully."
    assert set(body["data"]) == {"task_id", "video_id", "video_url", "image_url"}
    assert body["data"]["task_id"] == task_id and body["data"]["video_id"]
    assert_edited_video(sim.client, body["data"]["video_url"], body["data"]["image_url"], media_dir, tmp_path)


def test_alternate_shape_switches_per_task(sim: Sim) -> None:
    sim.control("POST", "config", {"callback_shape": "alternate"})
    first = sim.submit_ok(callBackUrl=f"{sim.sink.url}/cb")
    second = sim.submit_ok(callBackUrl=f"{sim.sink.url}/cb")
    assert "taskId" in sim.sink.wait_for(first)[0]["body"]
    assert "task_id" in sim.sink.wait_for(second)[0]["body"]["data"]


def test_kie_signs_callbacks_when_a_webhook_hmac_key_is_set(sim: Sim) -> None:
    sim.control("POST", "config", {"keys": {"kie": {"apiKey": KIE_KEY, "webhookHmacKey": "hk"}, "apikley": APIKLEY_KEY}})
    task_id = sim.submit_ok(callBackUrl=f"{sim.sink.url}/cb")
    headers = sim.sink.wait_for(task_id)[0]["headers"]
    timestamp = headers["X-Webhook-Timestamp"]
    expected = base64.b64encode(hmac.new(b"hk", f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()).decode()
    assert headers["X-Webhook-Signature"] == expected
    unsigned = sim.submit_ok("apikley", callBackUrl=f"{sim.sink.url}/cb")
    assert "X-Webhook-Signature" not in sim.sink.wait_for(unsigned)[0]["headers"]


def test_record_info_reflects_running_then_success(sim: Sim) -> None:
    sim.control("POST", "config", {"hold": True})
    task_id = sim.submit_ok()
    sim.wait_state(task_id, "running")
    running = sim.record_info(task_id)["data"]
    assert running["successFlag"] == 0 and running["errorMessage"] == ""
    assert running["response"] is None and running["completeTime"] is None
    sim.control("POST", "config", {"hold": False})
    done = wait_until(lambda: (d := sim.record_info(task_id)["data"])["successFlag"] == 1 and d, "success")
    assert done["response"]["resultVideoUrl"].startswith(f"{sim.url}/_sim/files/{task_id}/")


def test_unknown_task_is_a_404_in_the_body(sim: Sim) -> None:
    info = sim.record_info("00000000-0000-0000-0000-000000000000")
    assert info["code"] == 404 and info["data"] is None


def test_apikley_prefix_uses_its_own_key_and_tasks(sim: Sim, media_dir: Path, tmp_path: Path) -> None:
    sim.control("POST", "config", {"callback_shape": "B"})
    task_id = sim.submit_ok("apikley", callBackUrl=f"{sim.sink.url}/callbacks/apikley/j")
    [received] = sim.sink.wait_for(task_id)
    assert received["body"]["data"]["task_id"] == task_id
    info = sim.record_info(task_id, "apikley")
    assert info["data"]["successFlag"] == 1
    assert sim.record_info(task_id, "kie")["code"] == 404  # tasks are per provider
    assert sim.task(task_id)["provider"] == "apikley"
    assert_edited_video(sim.client, received["body"]["data"]["video_url"], received["body"]["data"]["image_url"], media_dir, tmp_path)


def test_generation_failure_fault_gives_failure_callbacks(sim: Sim) -> None:
    sim.control("POST", "faults", [{"fault": "generation_failure", "match_prompt": "forbidden"}])
    failed_a = sim.submit_ok(prompt="something forbidden", callBackUrl=f"{sim.sink.url}/cb")
    [received] = sim.sink.wait_for(failed_a)
    assert received["body"]["code"] == 400 and received["body"]["data"] is None and received["body"]["taskId"] == failed_a
    assert "moderator" in received["body"]["msg"]
    info = sim.record_info(failed_a)["data"]
    assert info["successFlag"] == 0 and "moderator" in info["errorMessage"] and info["errorCode"] == 400
    assert info["response"] is None and info["completeTime"] is None

    sim.control("POST", "config", {"callback_shape": "B"})
    failed_b = sim.submit_ok(prompt="forbidden again", callBackUrl=f"{sim.sink.url}/cb")
    body_b = sim.sink.wait_for(failed_b)[0]["body"]
    assert body_b["code"] == 400 and body_b["data"] == {"task_id": failed_b}

    fine = sim.submit_ok(prompt="harmless", callBackUrl=f"{sim.sink.url}/cb")
    assert sim.sink.wait_for(fine)[0]["body"]["code"] == 200
    assert sim.control("GET", "faults")["rules"][0]["applied"] == 2


def test_unfetchable_and_oversized_inputs_fail_the_task(sim: Sim) -> None:
    missing = sim.submit_ok(videoUrl=f"{sim.media}/nope.mp4")
    too_big = sim.submit_ok(videoUrl=f"{sim.media}/big.mp4")
    garbage = sim.submit_ok(videoUrl=f"{sim.media}/garbage.mp4")
    assert sim.wait_state(missing, "failed")["error"]["code"] == 451
    big = sim.wait_state(too_big, "failed")["error"]
    assert big["code"] == 400 and "too large" in big["msg"]
    assert sim.wait_state(garbage, "failed")["error"]["code"] == 400
    assert sim.record_info(missing)["data"]["errorCode"] == 451


def test_submit_faults_answer_with_429_500_and_402(sim: Sim) -> None:
    body = {"prompt": "p", "videoUrl": f"{sim.media}/nope.mp4"}
    sim.control("POST", "faults", [{"fault": "submit_429", "count": 1}])
    limited = sim.submit(body)
    assert limited.status_code == 429 and limited.json()["code"] == 429 and limited.json()["data"] is None
    assert sim.submit(body).json()["code"] == 200  # count exhausted

    sim.control("POST", "faults", [{"fault": "submit_500", "provider": "apikley"}])
    assert sim.submit(body).json()["code"] == 200  # provider filter
    broken = sim.submit(body, "apikley")
    assert broken.status_code == 500 and broken.json()["code"] == 500

    sim.control("POST", "faults", [{"fault": "insufficient_credits"}])
    poor = sim.submit(body)
    assert poor.status_code == 200 and poor.json()["code"] == 402
    codes = [entry["code"] for entry in sim.control("GET", "requests")]
    assert codes == [429, 200, 200, 500, 402]
    assert len(sim.control("GET", "tasks")) == 2  # the refusals created no task, only the two accepted submits did


def test_fault_rates_are_deterministic_with_a_seed(sim: Sim) -> None:
    body = {"prompt": "p", "videoUrl": f"{sim.media}/nope.mp4"}

    def pattern() -> list[int]:
        sim.control("POST", "faults", {"seed": 1234, "rules": [{"fault": "submit_429", "rate": 0.5}]})
        return [sim.submit(body).json()["code"] for _ in range(12)]

    first, second = pattern(), pattern()
    assert first == second
    assert set(first) == {200, 429}


def test_callback_faults_drop_duplicate_delay_and_foreign_host(sim: Sim) -> None:
    sim.control(
        "POST",
        "faults",
        [
            {"fault": "drop_callback", "match_prompt": "drop"},
            {"fault": "duplicate_callback", "match_prompt": "dup"},
            {"fault": "delay_callback", "match_prompt": "slow", "delay_seconds": 0.5},
            {"fault": "foreign_result_host", "match_prompt": "forged"},
        ],
    )
    cb = f"{sim.sink.url}/cb"
    dropped = sim.submit_ok(prompt="drop", callBackUrl=cb)
    duplicated = sim.submit_ok(prompt="dup", callBackUrl=cb)
    delayed = sim.submit_ok(prompt="slow", callBackUrl=cb)
    forged = sim.submit_ok(prompt="forged", callBackUrl=cb)

    dropped_task = sim.wait_callbacks_done(dropped)
    assert dropped_task["callback_status"] == "dropped" and dropped_task["callbacks"] == []
    assert dropped_task["state"] == "success" and sim.record_info(dropped)["data"]["successFlag"] == 1

    first, second = sim.sink.wait_for(duplicated, count=2)
    assert first["body"] == second["body"]

    sim.sink.wait_for(delayed)
    delayed_task = sim.wait_callbacks_done(delayed)
    sent_at = datetime.fromisoformat(delayed_task["callbacks"][0]["sent_at"])
    assert (sent_at - datetime.fromisoformat(delayed_task["completed_at"])).total_seconds() >= 0.45
    assert "delay_callback" in delayed_task["faults"]

    forged_body = sim.sink.wait_for(forged)[0]["body"]
    assert forged_body["data"]["result_video_url"].startswith("https://169.254.169.254/latest/meta-data")
    truth = sim.record_info(forged)["data"]["response"]["resultVideoUrl"]
    assert truth.startswith(f"{sim.url}/_sim/files/")


def test_expired_result_fault_serves_404_and_sets_expire_flag(sim: Sim) -> None:
    sim.control("POST", "faults", [{"fault": "expired_result"}])
    task_id = sim.submit_ok(callBackUrl=f"{sim.sink.url}/cb")
    body = sim.sink.wait_for(task_id)[0]["body"]
    assert sim.client.get(body["data"]["result_video_url"]).status_code in (404, 410)
    info = sim.record_info(task_id)["data"]
    assert info["successFlag"] == 1 and info["expireFlag"] == 1


def test_sim_tasks_lists_what_was_received(sim: Sim) -> None:
    sim.control("POST", "config", {"hold": True})
    body = {"prompt": "listed", "videoUrl": f"{sim.media}/input.mp4", "seed": 3}
    answer = sim.client.post(f"{sim.url}/apikley{GENERATE}", json=body, headers={"Authorization": f"Bearer {APIKLEY_KEY}", "X-Trace": "abc"})
    task_id = answer.json()["data"]["taskId"]
    [task] = sim.control("GET", "tasks")
    assert task["taskId"] == task_id and task["provider"] == "apikley"
    assert task["request"] == body
    assert task["headers"]["X-Trace"] == "abc"
    assert not any(name.lower() == "authorization" for name in task["headers"])
    assert task["state"] in ("queued", "running") and task["error"] is None and task["result_urls"] is None
    assert task["callbacks"] == [] and task["created_at"].endswith("Z")
    sim.control("DELETE", "tasks")
    assert sim.control("GET", "tasks") == []


def test_config_rejects_unknown_settings(sim: Sim) -> None:
    answer = sim.client.post(f"{sim.url}/_sim/config", json={"callback_shape": "C"})
    assert answer.status_code == 400 and "callback_shape" in answer.json()["error"]
    answer = sim.client.post(f"{sim.url}/_sim/faults", json=[{"fault": "meteor_strike"}])
    assert answer.status_code == 400 and "fault" in answer.json()["error"]
    assert sim.control("GET", "config")["callback_shape"] == "A"


def test_module_entry_point_prints_its_url_and_stops_on_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "local.simulator", "--host", "127.0.0.1", "--port", "0", "--ready-file", str(ready), "--quiet"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], 20)
        assert readable, "no ready line"
        line = process.stdout.readline().strip()
        match = re.fullmatch(r"simulator listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, line
        assert ready.read_text().strip() == match.group(1)
        health = httpx.get(f"{match.group(1)}/_sim/health", trust_env=False)
        assert health.json()["providers"] == ["kie", "apikley", "runware", "crun", "replicate", "runway"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_early_callback_reaches_the_client_before_the_submit_answer(sim: Sim) -> None:
    sim.control("POST", "faults", [{"fault": "early_callback", "match_prompt": "early"}])
    task_id = sim.submit_ok(prompt="early bird", callBackUrl=f"{sim.sink.url}/cb")
    # The answer waited for the callback: it is already here when the taskId comes back.
    [received] = sim.sink.for_task(task_id)
    assert received["body"]["code"] == 200 and received["body"]["taskId"] == task_id
    task = sim.task(task_id)
    assert task["faults"] == ["early_callback"]
    assert datetime.fromisoformat(task["callbacks"][0]["sent_at"]) <= datetime.fromisoformat(task["answered_at"])
    on_time = sim.submit_ok(prompt="on time", callBackUrl=f"{sim.sink.url}/cb")
    assert sim.task(on_time)["answered_at"] is not None
    assert sim.sink.wait_for(on_time)  # the usual order: answer first, callback later


def test_stale_callback_follows_the_final_one_in_the_task_shape(sim: Sim) -> None:
    sim.control("POST", "faults", [{"fault": "stale_callback"}])
    task_id = sim.submit_ok(callBackUrl=f"{sim.sink.url}/cb")
    final, stale = sim.sink.wait_for(task_id, count=2)
    assert final["body"]["code"] == 200 and final["body"]["data"]["result_video_url"]
    assert stale["body"] == {"code": 500, "msg": MSG_SERVER_ERROR, "data": None, "taskId": task_id}
    assert sim.record_info(task_id)["data"]["successFlag"] == 1  # the truth did not change

    sim.control("POST", "config", {"callback_shape": "B"})
    shape_b = sim.submit_ok(callBackUrl=f"{sim.sink.url}/cb")
    assert sim.sink.wait_for(shape_b, count=2)[1]["body"] == {"code": 500, "msg": MSG_SERVER_ERROR, "data": {"task_id": shape_b}}


def test_read_timeout_fault_creates_the_task_and_withholds_the_answer(sim: Sim) -> None:
    sim.control("POST", "faults", [{"fault": "read_timeout", "match_prompt": "timeout", "delay_seconds": 1.5}])
    body = {"prompt": "read timeout", "videoUrl": f"{sim.media}/input.mp4", "callBackUrl": f"{sim.sink.url}/cb"}
    with httpx.Client(timeout=httpx.Timeout(0.5), trust_env=False) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post(f"{sim.url}/kie{GENERATE}", json=body, headers={"Authorization": f"Bearer {KIE_KEY}"})
    [task] = sim.control("GET", "tasks")  # created once, and it runs and calls back as usual
    assert task["faults"] == ["read_timeout"]
    assert sim.sink.wait_for(task["taskId"])[0]["body"]["code"] == 200
    held = sim.wait_until_answered(task["taskId"])
    assert (datetime.fromisoformat(held["answered_at"]) - datetime.fromisoformat(held["created_at"])).total_seconds() >= 1.4

    # Without delay_seconds the hold is the submit_hold_seconds setting (default: past a 30 s read timeout).
    assert sim.control("GET", "config")["submit_hold_seconds"] == 35.0
    sim.control("POST", "config", {"submit_hold_seconds": 1.0})
    sim.control("POST", "faults", [{"fault": "read_timeout"}])
    with httpx.Client(timeout=httpx.Timeout(0.3), trust_env=False) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post(f"{sim.url}/apikley{GENERATE}", json=body, headers={"Authorization": f"Bearer {APIKLEY_KEY}"})
    tasks = sim.control("GET", "tasks")
    assert [t["provider"] for t in tasks] == ["kie", "apikley"]
    # The held request is logged when its answer goes: not left to land in the next test's log.
    sim.wait_until_answered(tasks[1]["taskId"])
    wait_until(lambda: any(entry["provider"] == "apikley" for entry in sim.control("GET", "requests")), "the held request in the log")


def test_submit_5xx_after_create_creates_the_task_then_answers_like_a_failing_gateway(sim: Sim) -> None:
    sim.control("POST", "faults", [{"fault": "submit_5xx_after_create", "provider": "kie"}])
    body = {"prompt": "gateway", "videoUrl": f"{sim.media}/input.mp4", "callBackUrl": f"{sim.sink.url}/cb"}
    answers = [sim.submit(body) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [502, 504, 500]  # in turn: two gateway pages, then kie's own 500
    assert answers[0].headers["content-type"] == "text/html" and "<title>502 Bad Gateway</title>" in answers[0].text
    assert answers[1].headers["content-type"] == "text/html" and "<title>504 Gateway Time-out</title>" in answers[1].text
    assert answers[2].json() == {"code": 500, "msg": "Server Error - An unexpected error occurred while processing the request", "data": None}

    tasks = sim.control("GET", "tasks")
    assert [(task["faults"], task["submit_answer"]) for task in tasks] == [
        (["submit_5xx_after_create"], "502 html"),
        (["submit_5xx_after_create"], "504 html"),
        (["submit_5xx_after_create"], "500 json"),
    ]
    for task in tasks:  # each created task runs and calls back as if the answer had been a 200
        assert sim.sink.wait_for(task["taskId"])[0]["body"]["code"] == 200
    assert [entry["http_status"] for entry in sim.control("GET", "requests")] == [502, 504, 500]

    sim.control("POST", "faults", [{"fault": "submit_5xx_after_create", "http_status": 504}])  # pinned to one answer
    assert [sim.submit(body, "apikley").status_code for _ in range(2)] == [504, 504]
    assert len(sim.control("GET", "tasks")) == 5
    refused = sim.client.post(f"{sim.url}/_sim/faults", json=[{"fault": "submit_5xx_after_create", "http_status": 503}])
    assert refused.status_code == 400 and "http_status" in refused.json()["error"]


def test_reset_after_read_creates_the_task_then_resets_the_connection(sim: Sim) -> None:
    sim.control("POST", "faults", [{"fault": "reset_after_read", "count": 1}])
    body = {"prompt": "reset", "videoUrl": f"{sim.media}/input.mp4", "callBackUrl": f"{sim.sink.url}/cb"}
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        sim.submit(body)
    [task] = sim.control("GET", "tasks")
    assert task["faults"] == ["reset_after_read"] and task["submit_answer"] == "connection reset"
    assert sim.sink.wait_for(task["taskId"])[0]["body"]["code"] == 200  # it ran all the same
    [logged] = sim.control("GET", "requests")
    assert logged["reset"] is True and logged["http_status"] is None
    assert sim.submit_ok()  # the server keeps serving after the reset (count exhausted)
    known = sim.control("GET", "faults")["known"]
    assert known["submit"] == ["submit_429", "submit_500", "insufficient_credits", "maintenance", "feature_disabled"]  # the faults that create no task
    assert set(known["answer"]) == {"read_timeout", "submit_5xx_after_create", "reset_after_read"}
