"""A stateful property test of intake and the job state machine (issue 10).

Real S3 and DynamoDB (moto server over HTTP); the provider is an in-process fake speaking the
kie.ai protocol over HTTP, so the real kie adapter classifies every answer. Hypothesis
interleaves at random: sidecar and video uploads in either order, re-uploads of the same
sidecar, duplicate and reordered S3 events, submit answers that create the task and then fail
(5xx, gateway HTML, a reset connection) or refuse without creating it (429, 455), callbacks
before and after the submit answer (duplicate, stale, without a task id), silent task ends,
reconciler runs on a fake clock and finalize runs. After every step it checks the promises:

- the provider created at most one task per job (the fake's count is the truth, not our answers);
- a job's history only moves forward, and a terminal job never changes again;
- a job's output prefix holds results + job.json or error.json, never both, never two sets;
- a sidecar version maps to exactly one job, and a replaced sidecar's job is never submitted;
- a job whose video intake had already found never fails as `pairing_timeout`;
- no result is copied before the provider's status API confirmed it (confirm-by-polling);
- a callback to the URL a task was given (its token, its task id) is never refused.

At the end every pending redelivery is made, the clock passes every deadline, and every job must
be terminal (nothing stuck).
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from aleph_pipeline.callbacks import receive_callback
from aleph_pipeline.errors import TransientError
from aleph_pipeline.finalize import finalize_job
from aleph_pipeline.intake import handle_object_created
from aleph_pipeline.reconcile import reconcile
from local.media import make_clip

from .conftest import MP4_HEAD, clear_caches

pytestmark = pytest.mark.timeout(900)

# Short, distinct timings so a few clock steps cross every one of them. Each is 25 s off every
# sum of clock steps (multiples of 50 s): whether a deadline has passed never depends on the real
# milliseconds a step took, so every example replays the same way.
CLOCK_STEPS = (50, 150, 400, 700, 4000)
TIMINGS = {
    "PAIRING_TIMEOUT_SECONDS": "625",
    "JOB_DEADLINE_SECONDS": "3625",
    "CALLBACK_GRACE_SECONDS": "75",
    "CLAIM_SETTLE_SECONDS": "325",
    "FINALIZE_GRACE_SECONDS": "125",
    "FINALIZE_MAX_NUDGES": "1",
    "SUBMIT_MAX_ATTEMPTS": "4",
}
SUBMIT_MAX_ATTEMPTS = int(TIMINGS["SUBMIT_MAX_ATTEMPTS"])
PAST_EVERY_DEADLINE = 10 * 3600  # a multiple of 50 s, like CLOCK_STEPS
SHOTS = ("incoming/shot-a", "incoming/shot-b")

# What the fake provider does with the next submit it receives.
ACCEPT = "accept"
SUBMIT_MODES = (
    ACCEPT,
    "refuse_429",
    "refuse_455",
    "callback_first",  # the success callback (with task id) arrives before the submit answer
    "bare_callback_first",  # ... without a task id in its body
    "bare_callback_and_finalize_first",  # ... and the stream runs finalize before the answer too
    "failure_callback_first",  # a failure callback arrives before the submit answer
    "create_then_502_html",
    "create_then_504_html",
    "create_then_500",
    "create_then_reset",  # the request was read, the connection dies without an answer
)
REFUSALS = {"refuse_429": (429, 429, "rate limited"), "refuse_455": (200, 455, "the service is under maintenance")}
GATEWAY_ERRORS = {"create_then_502_html": 502, "create_then_504_html": 504}

FORWARD_RANK = {"RECEIVED": 0, "SUBMITTED": 1, "SUCCEEDED": 2, "COMPLETED": 3}
TERMINAL = {"COMPLETED", "FAILED"}
RESULT_SET = {"result.mp4", "job.json"}


@dataclass
class Task:
    task_id: str
    job_id: str
    callback_url: str
    truth: str | None = None  # None while running, then "success" or "failure"


@dataclass
class FakeKie:
    """kie.ai's Aleph API in-process: counts the tasks it creates and serves their results."""

    url: str = ""
    tasks: list[Task] = field(default_factory=list)
    # ("poll-success" | "download", task id) in the order they happened.
    log: list[tuple[str, str]] = field(default_factory=list)
    next_mode: str = ACCEPT
    # What happened inside request handlers (another thread: hypothesis.note works only in the test's).
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # (task id, how the callback handler answered) for each callback that carried its task id.
    callback_answers: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ids: Iterator[int] = field(default_factory=itertools.count)

    def reset(self) -> None:
        with self.lock:
            self.tasks.clear()
            self.log.clear()
            self.notes.clear()
            self.errors.clear()
            self.callback_answers.clear()
            self.next_mode = ACCEPT
            self.ids = itertools.count()

    def record(self, text: str) -> None:
        with self.lock:
            self.notes.append(text)

    def take_notes(self) -> list[str]:
        with self.lock:
            taken, self.notes[:] = list(self.notes), []
            return taken

    def take_mode(self) -> str:
        with self.lock:
            mode, self.next_mode = self.next_mode, ACCEPT
            return mode

    def create_task(self, callback_url: str) -> Task:
        job_id = urlsplit(callback_url).path.rsplit("/", 1)[-1]
        with self.lock:
            task = Task(f"task-{next(self.ids)}", job_id, callback_url)
            self.tasks.append(task)
            return task

    def find(self, task_id: str) -> Task | None:
        with self.lock:
            return next((task for task in self.tasks if task.task_id == task_id), None)

    def tasks_of(self, job_id: str) -> list[Task]:
        with self.lock:
            return [task for task in self.tasks if task.job_id == job_id]

    def result_url(self, task: Task) -> str:
        return f"{self.url}/results/{task.task_id}.mp4"

    def callback_body(self, task: Task, outcome: str, *, with_task_id: bool = True) -> bytes:
        if outcome == "success":
            document: dict[str, Any] = {"code": 200, "msg": "success", "data": {"result_video_url": self.result_url(task)}}
        else:
            document = {"code": 400, "msg": "Your prompt was caught by our AI moderator.", "data": None}
        if with_task_id:
            document["taskId"] = task.task_id
        return json.dumps(document).encode()


def send_callback(fake: FakeKie, task: Task, outcome: str, *, with_task_id: bool = True) -> None:
    """Deliver a callback to the URL the task was given, as API Gateway would hand it to the handler."""
    parts = urlsplit(task.callback_url)
    _, _, provider_id, job_id = parts.path.split("/")
    token = parse_qs(parts.query)["token"][0]
    body = fake.callback_body(task, outcome, with_task_id=with_task_id)
    answer = receive_callback(provider_id, job_id, token, body, {"content-type": "application/json"})
    if with_task_id:
        with fake.lock:
            fake.callback_answers.append((task.task_id, answer.status))
    fake.record(f"callback {outcome}{'' if with_task_id else ' (no task id)'} for {task.task_id} of job {job_id[:8]}: {answer.status} {answer.body}")


def fake_kie_handler(fake: FakeKie) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, document: dict[str, Any]) -> None:
            self._answer(status, json.dumps(document).encode())

        def do_POST(self) -> None:
            try:
                self._submit()
            except Exception:
                with fake.lock:
                    fake.errors.append(traceback.format_exc())
                raise

        def _submit(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            mode = fake.take_mode()
            if mode in REFUSALS:
                status, code, message = REFUSALS[mode]
                self._json(status, {"code": code, "msg": message, "data": None})
                return
            task = fake.create_task(request["callBackUrl"])
            fake.record(f"{task.task_id} created for job {task.job_id[:8]}; the provider answers {mode}")
            if mode == "failure_callback_first":
                task.truth = "failure"
                send_callback(fake, task, "failure")
            elif mode.endswith("callback_first"):
                task.truth = "success"
                send_callback(fake, task, "success", with_task_id=not mode.startswith("bare"))
            if mode == "bare_callback_and_finalize_first":
                task.truth = "success"
                send_callback(fake, task, "success", with_task_id=False)
                try:
                    finalize_job(task.job_id)  # the stream record of SUCCEEDED fires finalize at once
                    fake.record(f"finalize of job {task.job_id[:8]} before the submit answer")
                except TransientError as exc:
                    fake.record(f"finalize of job {task.job_id[:8]} before the submit answer: retry later ({exc})")
            if mode in GATEWAY_ERRORS:
                status = GATEWAY_ERRORS[mode]
                self._answer(status, f"<html><body><h1>{status} Gateway error</h1></body></html>".encode(), "text/html")
            elif mode == "create_then_500":
                self._json(500, {"code": 500, "msg": "Server error", "data": None})
            elif mode == "create_then_reset":
                self.close_connection = True  # no answer at all: the client sees the connection end
            else:
                self._json(200, {"code": 200, "msg": "success", "data": {"taskId": task.task_id}})

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/api/v1/aleph/record-info":
                task = fake.find(parse_qs(url.query).get("taskId", [""])[0])
                if task is None:
                    self._json(200, {"code": 422, "msg": "record not found", "data": None})
                    return
                data: dict[str, Any] = {"taskId": task.task_id, "successFlag": 0, "errorMessage": "", "response": None, "expireFlag": 0}
                if task.truth == "success":
                    with fake.lock:
                        fake.log.append(("poll-success", task.task_id))
                    data.update(successFlag=1, response={"taskId": task.task_id, "resultVideoUrl": fake.result_url(task)})
                elif task.truth == "failure":
                    data.update(errorMessage="Your prompt was caught by our AI moderator.")
                self._json(200, {"code": 200, "msg": "success", "data": data})
                return
            if url.path.startswith("/results/"):
                task = fake.find(url.path.removeprefix("/results/").removesuffix(".mp4"))
                if task is None or task.truth != "success":
                    self._answer(404, b"not found", "text/plain")
                    return
                with fake.lock:
                    fake.log.append(("download", task.task_id))
                self._answer(200, MP4_HEAD + b"edited video of " + task.task_id.encode() * 64, "video/mp4")
                return
            self._answer(404, b"not found", "text/plain")

        def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
            pass

    return Handler


@dataclass
class World:
    """What every example shares: moto server, the fake provider, a real video's bytes."""

    moto_url: str
    fake: FakeKie
    video: bytes


@pytest.fixture
def world(aws: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    fake = FakeKie()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake_kie_handler(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("PROVIDER_ENDPOINTS", json.dumps({"kie": fake.url}))
    monkeypatch.setenv("RESULT_HOSTS", json.dumps({"kie": ["127.0.0.1"]}))
    monkeypatch.setenv("ALLOW_HTTP_RESULT_URLS", "true")
    monkeypatch.setenv("DEFAULT_PROVIDER", "kie")
    for name, value in TIMINGS.items():
        monkeypatch.setenv(name, value)
    clear_caches()
    video = make_clip(tmp_path / "clip.mp4", seconds=1.0, size="160x90", rate=12).read_bytes()
    try:
        yield World(str(aws["s3"].meta.endpoint_url), fake, video)
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Delivery:
    """An S3 ObjectCreated event as the submit queue holds it (``receive_count`` grows on redelivery)."""

    key: str
    receive_count: int = 1


class JobLifecycle(RuleBasedStateMachine):
    world: ClassVar[World]

    def __init__(self) -> None:
        super().__init__()
        world = self.world
        self.fake = world.fake
        self.fake.reset()
        suffix = uuid.uuid4().hex[:8]
        self.bucket = f"in-{suffix}"
        self.output = f"out-{suffix}"
        self.env = pytest.MonkeyPatch()
        self.env.setenv("JOBS_TABLE_NAME", f"jobs-{suffix}")
        self.env.setenv("INPUT_BUCKET_NAME", self.bucket)
        self.env.setenv("OUTPUT_BUCKET_NAME", self.output)
        clear_caches()
        self.s3 = boto3.client("s3", endpoint_url=world.moto_url)
        self.s3.create_bucket(Bucket=self.bucket)
        # Versioned: a re-upload of identical bytes is a new version (a new job) with the same ETag.
        self.s3.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})
        self.s3.create_bucket(Bucket=self.output)
        self.table = boto3.resource("dynamodb", endpoint_url=world.moto_url).create_table(
            TableName=f"jobs-{suffix}",
            KeySchema=[{"AttributeName": "jobId", "KeyType": "HASH"}],
            AttributeDefinitions=[
                {"AttributeName": "jobId", "AttributeType": "S"},
                {"AttributeName": "status", "AttributeType": "S"},
                {"AttributeName": "updatedAt", "AttributeType": "S"},
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "by-status",
                    "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"}, {"AttributeName": "updatedAt", "KeyType": "RANGE"}],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        self.clock_offset = 0.0
        self.events: list[str] = []  # every S3 event ever emitted (keys), for duplicates and reordering
        self.redeliveries: list[Delivery] = []  # submit messages that raised TransientError
        self.sidecar_versions: dict[str, list[str]] = {}  # sidecar key -> VersionIds, oldest first
        self.videos_uploaded: set[str] = set()  # shots whose video is in the bucket
        # Jobs intake handled while their sidecar version was current and the video was in the bucket.
        self.paired: set[str] = set()
        self.seen: dict[str, dict[str, Any]] = {}  # job id -> the item as the last check saw it
        self.tasks_checked = 0
        self.snapshot: list[dict[str, Any]] = []  # the jobs as the last check after a step saw them

    # Helpers

    def scan_jobs(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        scan: dict[str, Any] = {"ConsistentRead": True}
        while True:
            page = self.table.scan(**scan)
            items.extend(item for item in page["Items"] if "status" in item)  # not the pairing notes
            if "LastEvaluatedKey" not in page:
                return items
            scan["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def current_version(self, sidecar_key: str) -> str | None:
        versions = self.sidecar_versions.get(sidecar_key)
        return versions[-1] if versions else None

    def flush_notes(self) -> None:
        for text in self.fake.take_notes():
            note(f"  provider: {text}")

    def deliver(self, delivery: Delivery, mode: str) -> None:
        """Hand one queue message to intake, as the submit function does."""
        shot = delivery.key.rsplit(".", 1)[0]
        sidecar_key = f"{shot}.json"
        # The shot's jobs before the event: an open one (or one the event creates) is paired by it.
        states_before = {job["jobId"]: job["status"] for job in self.scan_jobs() if job.get("sidecarKey") == sidecar_key}
        self.fake.next_mode = mode
        try:
            handle_object_created(self.bucket, delivery.key, delivery.receive_count)
            outcome = "done"
        except TransientError as exc:
            outcome = f"TransientError ({exc}): the queue redelivers it"
            self.redeliveries.append(Delivery(delivery.key, delivery.receive_count + 1))
        finally:
            self.fake.next_mode = ACCEPT
        note(f"S3 event {delivery.key} (receive {delivery.receive_count}, a submit would be answered {mode}): {outcome}")
        self.flush_notes()
        if shot not in self.videos_uploaded:
            return
        if delivery.key == sidecar_key:
            version = self.current_version(sidecar_key)
            job = next((job for job in self.scan_jobs() if job.get("sidecarKey") == sidecar_key and job.get("sidecarVersion") == version), None)
            if job is not None and (job["jobId"] not in states_before or states_before[job["jobId"]] not in TERMINAL):
                self.paired.add(job["jobId"])
        else:
            self.paired.update(job_id for job_id, state in states_before.items() if state not in TERMINAL)

    def upload(self, key: str, body: bytes) -> str:
        answer = self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
        self.events.append(key)
        return str(answer["VersionId"])

    def now(self) -> float:
        return time.time() + self.clock_offset

    # Rules

    @rule(shot=st.sampled_from(SHOTS), deliver=st.booleans(), mode=st.sampled_from(SUBMIT_MODES))
    def upload_sidecar(self, shot: str, deliver: bool, mode: str) -> None:
        """A shot's sidecar, first uploaded or uploaded again unchanged (a new version, the same ETag)."""
        self.put_sidecar(shot, False, deliver, mode)

    @precondition(lambda self: bool(self.sidecar_versions))
    @rule(shot=st.sampled_from(SHOTS), deliver=st.booleans(), mode=st.sampled_from(SUBMIT_MODES))
    def edit_sidecar(self, shot: str, deliver: bool, mode: str) -> None:
        """A shot's sidecar uploaded again with a new prompt."""
        self.put_sidecar(shot, True, deliver, mode)

    def put_sidecar(self, shot: str, new_prompt: bool, deliver: bool, mode: str) -> None:
        key = f"{shot}.json"
        versions = self.sidecar_versions.setdefault(key, [])
        prompt = f"snow, take {len(versions) + 1}" if new_prompt else "snow"
        versions.append(self.upload(key, json.dumps({"prompt": prompt, "provider": "kie"}).encode()))
        note(f"uploaded {key} (prompt {prompt!r}), version {len(versions)}")
        if deliver:
            self.deliver(Delivery(key), mode)

    @rule(shot=st.sampled_from(SHOTS), deliver=st.booleans(), mode=st.sampled_from(SUBMIT_MODES))
    def upload_video(self, shot: str, deliver: bool, mode: str) -> None:
        """The video's first upload, or the same file again (a new event, the same ETag)."""
        key = f"{shot}.mp4"
        self.upload(key, self.world.video)
        self.videos_uploaded.add(shot)
        note(f"uploaded {key}")
        if deliver:
            self.deliver(Delivery(key), mode)

    @precondition(lambda self: bool(self.events))
    @rule(pick=st.integers(0, 63), mode=st.sampled_from(SUBMIT_MODES))
    def deliver_s3_event(self, pick: int, mode: str) -> None:
        """Any event ever emitted, again or late: S3 delivers at least once and in no order."""
        self.deliver(Delivery(self.events[pick % len(self.events)]), mode)

    @precondition(lambda self: bool(self.redeliveries))
    @rule(pick=st.integers(0, 63), mode=st.sampled_from(SUBMIT_MODES))
    def redeliver_after_transient_error(self, pick: int, mode: str) -> None:
        self.deliver(self.redeliveries.pop(pick % len(self.redeliveries)), mode)

    @precondition(lambda self: bool(self.fake.tasks))
    @rule(pick=st.integers(0, 63), outcome=st.sampled_from(["success", "failure"]), with_task_id=st.booleans())
    def provider_calls_back(self, pick: int, outcome: str, with_task_id: bool) -> None:
        """The task's first callback decides how it ended; later ones are duplicates or stale."""
        task = self.fake.tasks[pick % len(self.fake.tasks)]
        if task.truth is None:
            task.truth = outcome
        send_callback(self.fake, task, outcome, with_task_id=with_task_id)
        self.flush_notes()

    @precondition(lambda self: any(task.truth is None for task in self.fake.tasks))
    @rule(pick=st.integers(0, 63), outcome=st.sampled_from(["success", "failure"]))
    def task_ends_without_callback(self, pick: int, outcome: str) -> None:
        running = [task for task in self.fake.tasks if task.truth is None]
        task = running[pick % len(running)]
        task.truth = outcome
        note(f"{task.task_id} ended ({outcome}); its callback is lost")

    @rule(seconds=st.sampled_from(CLOCK_STEPS))
    def time_passes_and_reconciler_runs(self, seconds: int) -> None:
        self.clock_offset += seconds
        report = reconcile(self.now())
        note(f"+{seconds} s (clock +{self.clock_offset:g} s): reconcile {report.as_dict()}")

    @precondition(lambda self: any(job["status"] == "SUCCEEDED" for job in self.snapshot))
    @rule(pick=st.integers(0, 63))
    def finalize_runs(self, pick: int) -> None:
        """The stream runs finalize for a SUCCEEDED job (again, when the reconciler nudges it)."""
        succeeded = sorted(job["jobId"] for job in self.snapshot if job["status"] == "SUCCEEDED")
        self.finalize(succeeded[pick % len(succeeded)])

    def finalize(self, job_id: str) -> None:
        try:
            finalize_job(job_id)
            note(f"finalize job {job_id[:8]}")
        except TransientError as exc:
            note(f"finalize job {job_id[:8]}: retry later ({exc})")

    # Invariants: one method, one snapshot per step; each promise fails on a line of its own, so
    # hypothesis reports (and shrinks) each broken promise as a bug of its own.

    @invariant()
    def promises_hold(self) -> None:
        self.snapshot = jobs = self.scan_jobs()
        assert not self.fake.errors, f"the fake provider failed (a bug of this test): {self.fake.errors}"
        self.one_task_per_job()
        self.only_the_current_sidecar_version_is_submitted(jobs)
        self.states_move_forward_only(jobs)
        self.one_output_set(jobs)
        self.one_job_per_sidecar_version(jobs)
        self.a_paired_job_never_times_out_pairing(jobs)
        self.results_are_copied_only_after_the_provider_confirmed_them()
        self.the_callback_url_a_task_was_given_stays_valid()

    def one_task_per_job(self) -> None:
        for job_id in {task.job_id for task in self.fake.tasks}:
            tasks = [task.task_id for task in self.fake.tasks_of(job_id)]
            assert len(tasks) <= 1, f"paid twice: the provider created {len(tasks)} tasks ({', '.join(tasks)}) for job {job_id}"

    def only_the_current_sidecar_version_is_submitted(self, jobs: list[dict[str, Any]]) -> None:
        by_id = {job["jobId"]: job for job in jobs}
        for task in self.fake.tasks[self.tasks_checked :]:
            job = by_id[task.job_id]
            assert job.get("sidecarVersion") == self.current_version(str(job["sidecarKey"])), (
                f"paid for a replaced sidecar: {task.task_id} was created for job {task.job_id}, made from a version of "
                f"{job['sidecarKey']} replaced before the job was submitted"
            )
        self.tasks_checked = len(self.fake.tasks)

    def states_move_forward_only(self, jobs: list[dict[str, Any]]) -> None:
        for job in jobs:
            job_id, history = job["jobId"], [entry["state"] for entry in job["history"]]
            assert history[0] == "RECEIVED" and history[-1] == job["status"], f"job {job_id}: history {history} vs state {job['status']}"
            for before, after in itertools.pairwise(history):
                assert before not in TERMINAL, f"job {job_id} left the terminal state {before}: {history}"
                assert after == "FAILED" or FORWARD_RANK[after] > FORWARD_RANK[before], f"job {job_id} moved backwards: {history}"
            previous = self.seen.get(job_id)
            if previous is not None:
                earlier = [entry["state"] for entry in previous["history"]]
                assert history[: len(earlier)] == earlier, f"job {job_id} rewrote its history: {earlier} became {history}"
                if previous["status"] in TERMINAL:
                    changed = sorted(name for name in set(job) | set(previous) if job.get(name) != previous.get(name))
                    assert not changed, f"job {job_id} changed after it was {previous['status']}: {changed}"
            self.seen[job_id] = job

    def one_output_set(self, jobs: list[dict[str, Any]]) -> None:
        keys = [entry["Key"] for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.output) for entry in page.get("Contents", [])]
        for job in jobs:
            prefix = str(job["outputPrefix"])
            names = {key.removeprefix(prefix) for key in keys if key.startswith(prefix)}
            state = job["status"]
            if "error.json" in names:
                assert names == {"error.json"}, f"job {job['jobId']} ({state}) left {sorted(names)}: results beside error.json"
                assert state == "FAILED", f"job {job['jobId']} has an error.json but is {state}"
            assert "job.json" not in names or state == "COMPLETED", f"job {job['jobId']} has a job.json but is {state}"
            assert names <= RESULT_SET | {"error.json"}, f"job {job['jobId']} ({state}) left a second set of outputs: {sorted(names)}"
            if state == "COMPLETED":
                assert names == RESULT_SET, f"completed job {job['jobId']} left {sorted(names)}"
            if state == "FAILED":
                assert names == {"error.json"}, f"failed job {job['jobId']} left {sorted(names)}, not error.json alone"

    def one_job_per_sidecar_version(self, jobs: list[dict[str, Any]]) -> None:
        for key, versions in self.sidecar_versions.items():
            for version in versions:
                same = [job["jobId"] for job in jobs if job.get("sidecarKey") == key and job.get("sidecarVersion") == version]
                assert len(same) <= 1, f"{key} version {version} became {len(same)} jobs: {same}"

    def a_paired_job_never_times_out_pairing(self, jobs: list[dict[str, Any]]) -> None:
        for job in jobs:
            error = job.get("error") or {}
            assert not (job["jobId"] in self.paired and error.get("code") == "pairing_timeout"), (
                f"job {job['jobId']} failed as pairing_timeout although intake had found its video: {error.get('message')}"
            )

    def results_are_copied_only_after_the_provider_confirmed_them(self) -> None:
        confirmed: set[str] = set()
        with self.fake.lock:
            log = list(self.fake.log)
        for kind, task_id in log:
            if kind == "poll-success":
                confirmed.add(task_id)
            else:
                assert task_id in confirmed, f"the result of {task_id} was copied without asking the provider's status API first"

    def the_callback_url_a_task_was_given_stays_valid(self) -> None:
        with self.fake.lock:
            refused = [(task_id, status) for task_id, status in self.fake.callback_answers if status != 200]
        assert not refused, f"the provider's callbacks (to the URL, token and task id it was given) were refused: {refused}"

    # The end: what SQS and the schedule would still do, then nothing may be left waiting.

    def teardown(self) -> None:
        try:
            if sys.exc_info()[1] is None:  # a failing step is reported as it is, not masked by this
                self.settle_everything()
        finally:
            self.env.undo()
            clear_caches()
            self.table.delete()

    def settle_everything(self) -> None:
        for _attempt in range(3 * SUBMIT_MAX_ATTEMPTS):
            if not self.redeliveries:
                break
            self.deliver(self.redeliveries.pop(0), ACCEPT)
        for _run in range(int(TIMINGS["FINALIZE_MAX_NUDGES"]) + 3):
            self.clock_offset += PAST_EVERY_DEADLINE
            note(f"settling: reconcile {reconcile(self.now()).as_dict()}")
            for job in self.scan_jobs():
                if job["status"] == "SUCCEEDED":
                    self.finalize(job["jobId"])
        self.flush_notes()
        self.promises_hold()
        stuck = {job["jobId"]: job["status"] for job in self.snapshot if job["status"] not in TERMINAL}
        assert not stuck, f"jobs left waiting after every deadline passed and every redelivery was made: {stuck}"


def test_job_lifecycle_keeps_its_promises(world: World) -> None:
    JobLifecycle.world = world
    run_state_machine_as_test(
        JobLifecycle,
        settings=settings(
            max_examples=50,
            stateful_step_count=30,
            deadline=None,
            # No explain phase: on Python < 3.12 its tracer slows every call of the replay several times over.
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
            suppress_health_check=[HealthCheck.too_slow],
            database=None,
        ),
    )
