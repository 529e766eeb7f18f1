"""The forged-callback corpus: requests to the callback API that must change nothing.

Four jobs complete for real (two kie, one Runware, one crun); a fifth kie job is held SUBMITTED by
the simulator. Then each forged request goes to ``POST /callbacks/{provider}/{jobId}?token=…``
and must get the status design.md's Callback API gives it (401 bad or missing token, 404 unknown
job or provider, 400 malformed or off-host, 413 over 1 MB, 200 "ignored" for a late or repeated
callback), while every job's item and output files stay exactly as they were, and no URL a
forged callback names is fetched: a "foreign host" server on 127.0.0.1 (reached as
``localhost``) counts its requests, and ``169.254.169.254`` cannot have been fetched, because no
job left its state, so finalize (the only code that downloads a result) never ran for it.

The https rule: the local stack lets results come over http from 127.0.0.1 (the simulator serves
them there), so here the scheme rule shows as ``file://`` and ``ftp://`` URLs refused on that
allowed host; ``tests/integration/test_forged_callbacks.py`` shows an ``http://`` URL on a
provider's own host refused with the production settings.

``pytest -s`` prints the figures.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from .conftest import Stack, wait_until

pytestmark = pytest.mark.e2e

MAX_CALLBACK_BYTES = 1024 * 1024
OFF_HOST = "not on the provider's allowed hosts"
OTHER_TASK = "task id does not belong to this job"
TOKEN_IN_URL = re.compile(r"/callbacks/[a-z]+/[0-9a-f]{32}\?token=([A-Za-z0-9_\-]+)")


@dataclass
class RealJob:
    """A job that ran through the stack, with what the provider was given and sent back."""

    label: str
    provider: str
    job_id: str
    token: str
    task_id: str
    callback: dict[str, Any] | None  # the body the simulator POSTed (None while held)


@dataclass(frozen=True)
class Forged:
    name: str
    provider: str  # the path's provider segment
    job_id: str  # the path's job segment
    token: str | None  # None: no token parameter at all
    body: bytes
    status: int
    outcome: str | None = None  # the 200 answer's "status" ("ignored")
    content_type: str = "application/json"
    says: str = ""  # words the answer must carry (default: by status)

    @property
    def expected_words(self) -> str:
        return self.says or {401: "token", 404: "no such job", 413: "over 1048576 bytes"}.get(self.status, "")


class ForeignHost:
    """An HTTP server standing in for a host no result may come from; it counts what reaches it."""

    def __init__(self) -> None:
        seen: list[str] = []
        self.requests = seen

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", "4")
                self.end_headers()
                self.wfile.write(b"evil")

            do_HEAD = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @contextmanager
    def running(self) -> Iterator[ForeignHost]:
        self._thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


def run_jobs(stack: Stack, folder: str, jobs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Upload ``label -> sidecar`` pairs at once; their job items once each is past RECEIVED."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda label: stack.put(f"{folder}{label}.mp4", stack.clip), jobs))
        list(pool.map(lambda label: stack.put_sidecar(f"{folder}{label}.json", jobs[label]), jobs))
    return {label: stack.wait_for_job(f"{folder}{label}.json", {"SUBMITTED", "COMPLETED", "FAILED"}) for label in jobs}


def real_job(stack: Stack, label: str, marker: str, item: dict[str, Any], wait_callback: bool = True) -> RealJob:
    (task,) = stack.sim_tasks(marker)
    token = TOKEN_IN_URL.search(json.dumps(task["request"]))
    assert token, task["request"]
    callback = None
    if wait_callback:
        assert task["callbacks"], task
        callback = task["callbacks"][0]["body"]
    return RealJob(label, item["provider"], item["jobId"], token.group(1), item["providerTaskId"], callback)


def snapshot(stack: Stack, job_id: str) -> dict[str, Any]:
    """Everything a callback could change: the whole job item and the job's output files."""
    item = stack.table.get_item(Key={"jobId": job_id}, ConsistentRead=True)["Item"]
    listed = stack.s3.list_objects_v2(Bucket=stack.info["output_bucket"], Prefix=item["outputPrefix"])
    return {"item": item, "outputs": {entry["Key"]: entry["ETag"] for entry in listed.get("Contents", [])}}


def post(stack: Stack, case: Forged) -> tuple[int, dict[str, Any]]:
    query = "" if case.token is None else f"?token={case.token}"
    answer = stack.api.post(f"/callbacks/{case.provider}/{case.job_id}{query}", content=case.body, headers={"content-type": case.content_type})
    try:
        body = answer.json()
    except ValueError:
        body = {"raw": answer.text[:200]}
    return answer.status_code, body


def dumps(document: Any) -> bytes:
    return json.dumps(document).encode()


def kie_a(task_id: str, video: str, image: str | None = None) -> bytes:
    return dumps({"code": 200, "msg": "success", "data": {"result_video_url": video, "result_image_url": image or video}, "taskId": task_id})


def kie_b(task_id: str, video: str) -> bytes:
    return dumps({"code": 200, "msg": "All generated successfully.", "data": {"task_id": task_id, "video_id": "v1", "video_url": video, "image_url": video}})


def forged_requests(jobs: dict[str, RealJob], held: RealJob, foreign: ForeignHost, sim_url: str) -> list[Forged]:
    k1, k2, rw, cr = jobs["kie-1"], jobs["kie-2"], jobs["runware"], jobs["crun"]
    assert k1.callback and rw.callback and cr.callback
    real_video = str(k1.callback["data"].get("result_video_url") or k1.callback["data"].get("video_url"))
    away = f"http://localhost:{foreign.port}/result.mp4"  # reaches the foreign server if ever fetched
    metadata = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    kie_failure = dumps({"code": 501, "msg": "Generation failed", "data": None, "taskId": k1.task_id})
    # The simulator calls back bare by default; either way this is the task object.
    crun_bare = dict(cr.callback["data"]) if "status" not in cr.callback else dict(cr.callback)
    rw_item = dict(rw.callback["data"][0])
    oversized = dumps({"code": 200, "msg": "x" * MAX_CALLBACK_BYTES, "data": {"video_url": real_video}, "taskId": k1.task_id})
    wrong = secrets.token_urlsafe(32)
    loopback = f"127.0.0.1:{foreign.port}"  # the allowed host here, at the foreign server's port
    on = held
    return [
        # ---- who is calling: tokens, jobs, providers (kie job 1, completed) ----------------------
        Forged("no token", "kie", k1.job_id, None, dumps(k1.callback), 401),
        Forged("empty token", "kie", k1.job_id, "", dumps(k1.callback), 401),
        Forged("wrong token", "kie", k1.job_id, wrong, dumps(k1.callback), 401),
        Forged("token of another job", "kie", k1.job_id, k2.token, dumps(k1.callback), 401),
        Forged("token of a Runware job on a kie job", "kie", k1.job_id, rw.token, dumps(k1.callback), 401),
        Forged("unknown job", "kie", uuid.uuid4().hex, k1.token, dumps(k1.callback), 404),
        Forged("job id not 32 hex", "kie", k1.job_id[:31] + "g", k1.token, dumps(k1.callback), 404),
        Forged("unknown provider in the path", "acme", k1.job_id, k1.token, dumps(k1.callback), 404),
        Forged("kie job at /callbacks/crun", "crun", k1.job_id, k1.token, dumps(crun_bare), 404),
        Forged("kie job at /callbacks/apikley (same protocol)", "apikley", k1.job_id, k1.token, dumps(k1.callback), 404),
        Forged("crun job at /callbacks/kie", "kie", cr.job_id, cr.token, dumps(k1.callback), 404),
        # ---- replays and late news (valid token, job completed) ---------------------------------
        Forged("replay of the real success (kie shape A)", "kie", k1.job_id, k1.token, dumps(k1.callback), 200, "ignored"),
        Forged("success again in kie shape B", "kie", k1.job_id, k1.token, kie_b(k1.task_id, real_video), 200, "ignored"),
        Forged("failure after success (kie)", "kie", k1.job_id, k1.token, kie_failure, 200, "ignored"),
        Forged("success on a foreign host after completion", "kie", k1.job_id, k1.token, kie_a(k1.task_id, away), 200, "ignored"),
        Forged("replay of the real webhook (Runware)", "runware", rw.job_id, rw.token, dumps(rw.callback), 200, "ignored"),
        Forged(
            "failure after success (Runware errors envelope)",
            "runware",
            rw.job_id,
            rw.token,
            dumps({"errors": [{"code": "timeoutProvider", "message": "late", "taskUUID": rw.task_id}]}),
            200,
            "ignored",
        ),
        Forged(
            "Runware result on 169.254.169.254 after completion",
            "runware",
            rw.job_id,
            rw.token,
            dumps({"data": [{**rw_item, "videoUUID": str(uuid.uuid4()), "videoURL": metadata}]}),
            200,
            "ignored",
        ),
        Forged("replay of the real callback (crun)", "crun", cr.job_id, cr.token, dumps(cr.callback), 200, "ignored"),
        Forged("success again, crun bare", "crun", cr.job_id, cr.token, dumps(crun_bare), 200, "ignored"),
        Forged("success again, crun wrapped", "crun", cr.job_id, cr.token, dumps({"code": 200, "message": "success", "data": crun_bare}), 200, "ignored"),
        Forged("failure after success, crun wrapped", "crun", cr.job_id, cr.token, dumps({"code": 501, "message": "failed", "data": None}), 200, "ignored"),
        Forged(
            "failure after success, crun bare",
            "crun",
            cr.job_id,
            cr.token,
            dumps({"task_id": cr.task_id, "status": "failed", "result": {"code": 501, "message": "nope"}}),
            200,
            "ignored",
        ),
        # ---- malformed and wrong shapes (valid token) -------------------------------------------
        Forged("malformed JSON", "kie", k1.job_id, k1.token, b'{"code": 200, "data": {', 400),
        Forged("binary body", "kie", k1.job_id, k1.token, b"\xff\xfe\x00\x01" * 8, 400, content_type="application/octet-stream"),
        Forged("empty body", "kie", k1.job_id, k1.token, b"", 400),
        Forged("JSON array", "kie", k1.job_id, k1.token, b"[]", 400),
        Forged("kie code as a string", "kie", k1.job_id, k1.token, dumps({"code": "200", "data": {"video_url": real_video}}), 400),
        Forged("kie data as a list", "kie", k1.job_id, k1.token, dumps({"code": 200, "data": [real_video]}), 400),
        Forged("kie success without a video URL", "kie", k1.job_id, k1.token, dumps({"code": 200, "msg": "ok", "data": {"task_id": k1.task_id}}), 400),
        Forged("Runware data not a list", "runware", rw.job_id, rw.token, dumps({"data": "done"}), 400),
        Forged("Runware item without videoURL", "runware", rw.job_id, rw.token, dumps({"data": [{"taskUUID": rw.task_id, "taskType": "videoInference"}]}), 400),
        Forged("kie shape at the Runware job", "runware", rw.job_id, rw.token, dumps(k1.callback), 400),
        Forged("crun unknown status", "crun", cr.job_id, cr.token, dumps({"task_id": cr.task_id, "status": "exploded"}), 400),
        Forged("crun wrapped without data", "crun", cr.job_id, cr.token, dumps({"code": 200, "message": "success"}), 400),
        Forged("oversized body (> 1 MB)", "kie", k1.job_id, k1.token, oversized, 413),
        Forged("oversized body without a token", "kie", k1.job_id, None, oversized, 413),
        # ---- task ids of other jobs -------------------------------------------------------------
        Forged("kie task id of another job", "kie", k1.job_id, k1.token, kie_a(k2.task_id, real_video), 400, says=OTHER_TASK),
        Forged("crun task id of another job", "crun", cr.job_id, cr.token, dumps({**crun_bare, "task_id": k1.task_id}), 400, says=OTHER_TASK),
        Forged(
            "Runware taskUUID of another job",
            "runware",
            rw.job_id,
            rw.token,
            dumps({"data": [{**rw_item, "taskUUID": str(uuid.uuid4())}]}),
            400,
            says=OTHER_TASK,
        ),
        # ---- a job still waiting for its result (held SUBMITTED): the URL checks ----------------
        Forged("result on a foreign host (http)", "kie", on.job_id, on.token, kie_a(on.task_id, away), 400, says=OFF_HOST),
        Forged("result on a foreign host (https)", "kie", on.job_id, on.token, kie_b(on.task_id, away.replace("http:", "https:")), 400, says=OFF_HOST),
        Forged("result on 169.254.169.254", "kie", on.job_id, on.token, kie_a(on.task_id, metadata), 400, says=OFF_HOST),
        Forged("result as file://", "kie", on.job_id, on.token, kie_a(on.task_id, "file:///etc/passwd"), 400, says=OFF_HOST),
        Forged("result as ftp:// on the allowed host", "kie", on.job_id, on.token, kie_a(on.task_id, f"ftp://{loopback}/r.mp4"), 400, says=OFF_HOST),
        Forged("credentials in the URL", "kie", on.job_id, on.token, kie_a(on.task_id, f"http://user:pw@{loopback}/r.mp4"), 400, says=OFF_HOST),
        Forged(
            "allowed host @ foreign host", "kie", on.job_id, on.token, kie_a(on.task_id, f"http://127.0.0.1@localhost:{foreign.port}/r.mp4"), 400, says=OFF_HOST
        ),
        # The cover is optional (one on a foreign host is dropped, the video still counts: see
        # tests/integration/test_forged_callbacks.py), but an allowed cover never carries a foreign video.
        Forged(
            "cover on the allowed host, video on 169.254.169.254",
            "kie",
            on.job_id,
            on.token,
            kie_a(on.task_id, metadata, f"http://{loopback}/c.png"),
            400,
            says=OFF_HOST,
        ),
        Forged("result URL with an unclosed IPv6 bracket", "kie", on.job_id, on.token, kie_a(on.task_id, f"http://[{loopback}/r.mp4"), 400, says=OFF_HOST),
        Forged("fullwidth dots in the host", "kie", on.job_id, on.token, kie_a(on.task_id, f"http://127．0．0．1:{foreign.port}/r.mp4"), 400, says=OFF_HOST),
        Forged("result URL with a port out of range", "kie", on.job_id, on.token, kie_a(on.task_id, "http://127.0.0.1:99999/r.mp4"), 400, says=OFF_HOST),
        Forged("kie number past int()'s digit limit", "kie", on.job_id, on.token, b'{"code": 2' + b"0" * 5000 + b"}", 400),
        Forged("Runware taskUUID as a list", "runware", rw.job_id, rw.token, dumps({"data": [{**rw_item, "taskUUID": [rw.task_id]}]}), 400),
        Forged("token with non-ASCII characters", "kie", on.job_id, "töken", kie_failure, 401),
        Forged("task id of another job", "kie", on.job_id, on.token, kie_a(k1.task_id, f"{sim_url}/_sim/files/x/result.mp4"), 400, says=OTHER_TASK),
        Forged("failure with a wrong token", "kie", on.job_id, wrong, kie_failure, 401),
        Forged("failure with another job's token", "kie", on.job_id, k1.token, kie_failure, 401),
        Forged("success without a token", "kie", on.job_id, None, kie_a(on.task_id, f"{sim_url}/_sim/files/x/result.mp4"), 401),
    ]


def test_forged_callbacks_change_nothing_and_fetch_nothing(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    folder = f"{stack.prefix}forged-{unique}/"
    documents = {
        "kie-1": {"prompt": f"kie one {unique}-k1"},
        "kie-2": {"prompt": f"kie two {unique}-k2"},
        "runware": {"prompt": f"runware {unique}-rw", "provider": "runware"},
        "crun": {"prompt": f"crun {unique}-cr", "provider": "crun"},
    }
    items = run_jobs(stack, folder, documents)
    for label in documents:
        items[label] = stack.wait_for_job(f"{folder}{label}.json")
        assert items[label]["status"] == "COMPLETED", (label, items[label].get("error"))
    markers = {"kie-1": "k1", "kie-2": "k2", "runware": "rw", "crun": "cr"}
    jobs = {label: real_job(stack, label, f"{unique}-{markers[label]}", items[label]) for label in documents}

    stack.sim_config(hold=True)  # the next task stays running: its job waits SUBMITTED
    try:
        held_item = run_jobs(stack, folder, {"held": {"prompt": f"held {unique}-held"}})["held"]
        assert held_item["status"] == "SUBMITTED"
        held = real_job(stack, "held", f"{unique}-held", held_item, wait_callback=False)

        every = [*jobs.values(), held]
        before = {job.job_id: snapshot(stack, job.job_id) for job in every}
        statuses: Counter[int] = Counter()
        problems: list[str] = []
        moved: set[str] = set()
        with ForeignHost().running() as foreign:
            cases = forged_requests(jobs, held, foreign, stack.info["simulator_url"])
            for case in cases:
                status, answer = post(stack, case)
                statuses[status] += 1
                wrong_answer = bool(case.outcome and answer.get("status") != case.outcome) or case.expected_words not in json.dumps(answer)
                if status != case.status or wrong_answer:
                    problems.append(f"{case.name}: {status} {answer}, expected {case.status} {case.outcome or case.expected_words}")
                changed = [job.label for job in every if snapshot(stack, job.job_id) != before[job.job_id]]
                if changed:
                    problems.append(f"{case.name}: changed {changed}")
                    moved.update(changed)
                    before.update({job.job_id: snapshot(stack, job.job_id) for job in every})  # blame the next change on its own case
            fetched = list(foreign.requests)
    finally:
        stack.sim_config(hold=False)

    # The held job was only waiting: released, it completes with the simulator's own result.
    done = stack.wait_for_job(f"{folder}held.json")
    assert done["status"] == "COMPLETED", done.get("error")
    assert [entry["state"] for entry in done["history"]] == ["RECEIVED", "SUBMITTED", "SUCCEEDED", "COMPLETED"]
    assert stack.output_keys(done["outputPrefix"])  # results copied from the simulator, not the foreign host
    wait_until(lambda: bool(stack.sim_tasks(f"{unique}-held")[0]["callbacks"]), 30, "the held job's real callback")
    print(
        f"\nforged-callback corpus: {len(cases)} requests, statuses: {dict(sorted(statuses.items()))}, "
        f"jobs changed: {len(moved)} of {len(every)} ({len(jobs)} completed, 1 waiting), "
        f"foreign-host requests: {len(fetched)}, mismatches: {len(problems)}"
    )
    assert len(cases) >= 20
    assert not problems, "\n".join(problems)
    assert fetched == []
    for job in jobs.values():
        assert snapshot(stack, job.job_id) == before[job.job_id]  # and the held job's real callback changed none of them


def test_the_foreign_host_really_counts(unique: str) -> None:
    """The corpus's 'nothing fetched' rests on this server seeing a request when one is made."""
    import httpx

    with ForeignHost().running() as foreign, httpx.Client(trust_env=False, timeout=5) as client:
        answer = client.get(f"http://localhost:{foreign.port}/{unique}.mp4")
    assert answer.status_code == 200
    assert foreign.requests == [f"/{unique}.mp4"]
