"""Runway's own task API for ``aleph2``, served under ``/runway``.

Written from /work/shared/providers.md ("Native Runway API") and the shapes of Runway's official
SDK (``uploads``, ``video_to_video``, ``tasks``), never from the product's client code.

Wire facts implemented here:
- Every API call needs ``Authorization: Bearer <key>`` (401 otherwise) and
  ``X-Runway-Version: 2024-11-06`` (400 otherwise). Errors are ``{"error": "...", "issues": [...]}``.
- ``POST /v1/uploads {filename, type: "ephemeral"}`` answers ``{uploadUrl, fields, runwayUri}``;
  the file is then POSTed to ``uploadUrl`` as ``multipart/form-data``: every one of ``fields``
  unchanged, then the file part (``file``) last, like a presigned S3 POST (204 when stored). The
  ``runway://`` URI then names the file.
- ``POST /v1/video_to_video`` takes exactly ``model`` (``aleph2``), ``videoUri`` (``runway://``,
  http(s) or a data URI), ``promptText`` (at most 1000 UTF-16 units), ``keyframes`` (at most 5,
  each ``{uri, seconds | at: first|last}``), ``seed``, ``ratio``, ``targetAspectRatio`` and
  ``contentModeration`` (``{publicFigureThreshold: auto|low}``); any other field is refused with
  400 and an issue naming it. The answer is ``{"id": "<uuid>"}``.
- ``GET /v1/tasks/{id}``: ``PENDING``, ``THROTTLED`` (waiting for a slot: more of the account's
  tasks running than its concurrency, ``POST /runway/_sim/config {"concurrency": n}``; ``GET``
  the same path reports ``maxRunning``, the most tasks that ran at once, and ``throttled``, how
  many tasks ever waited THROTTLED, so a client's own in-flight limit can be proved by the
  provider's count; ``{"resetCounts": true}`` zeroes both),
  ``RUNNING`` (``progress`` 0-1), ``SUCCEEDED`` (``output``: each fetch of the task mints fresh
  URLs; with the ``expired_result`` fault the first URL minted answers 404, as a link past its
  24-48 h does), ``FAILED`` (``failure``, ``failureCode``: the ``generation_failure`` fault's
  ``msg`` when it is a code such as ``INTERNAL.BAD_OUTPUT.CODE01``, else ``SAFETY.INPUT.TEXT``),
  ``CANCELLED`` (``DELETE /v1/tasks/{id}``, or the ``cancelled`` fault).
- No webhooks: Runway never calls back.

The edit itself is the simulator's shared ffmpeg stand-in (``editor.py``), fed the uploaded file.
"""

from __future__ import annotations

import email.parser
import email.policy
import hmac
import json
import logging
import re
import threading
import uuid
from typing import Any
from urllib.parse import quote, urlsplit

from local.simulator.context import VIDEO_FILE, SimContext
from local.simulator.faults import FaultRule
from local.simulator.fields import unknown_fields
from local.simulator.store import Task, iso, utc_now
from local.simulator.web import Request, Response, json_response

log = logging.getLogger("local.simulator")

API_VERSION = "2024-11-06"
MODEL = "aleph2"
ORGANIZATION_PATH = "/v1/organization"  # the account's creditBalance, tier and usage
BODY_FIELDS = frozenset({"model", "videoUri", "promptText", "keyframes", "seed", "ratio", "targetAspectRatio", "contentModeration"})
KEYFRAME_FIELDS = frozenset({"uri", "seconds", "at"})
UPLOAD_FIELDS = frozenset({"filename", "type"})
RATIOS = ("1280:720", "720:1280", "1104:832", "832:1104", "960:960", "1584:672", "848:480", "640:480")
# ffmpeg's crop for each output resolution (the shape, not the size).
CROP = {"1280:720": "16:9", "720:1280": "9:16", "1104:832": "4:3", "832:1104": "3:4", "960:960": "1:1", "1584:672": "21:9", "848:480": "16:9", "640:480": "4:3"}
MAX_PROMPT_UNITS = 1000
MAX_KEYFRAMES = 5
MAX_SEED = 4294967295
DEFAULT_CONCURRENCY = 2
DEFAULT_FAILURE_CODE = "SAFETY.INPUT.TEXT"
FAILURE_CODE_PATTERN = re.compile(r"[A-Z_]+(\.[A-Z0-9_]+)*")
# Runway's own words for its refusals.
MSG_CREDITS = "You do not have enough credits to run this task."
MSG_RATE = "You have exceeded the rate limit or daily task limit. Please try again later."
MSG_SERVER = "An unexpected error occurred."
SUBMIT_FAULT_ANSWERS = {"submit_429": (429, MSG_RATE), "submit_500": (500, MSG_SERVER), "insufficient_credits": (400, MSG_CREDITS)}


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class RunwayProtocol:
    """Runway's API for the ``aleph2`` video-to-video model, uploads and tasks."""

    def __init__(self, ctx: SimContext, name: str = "runway") -> None:
        self.name = name
        self.ctx = ctx
        self.concurrency = DEFAULT_CONCURRENCY
        self._slots = threading.Condition()
        self._running = 0
        self._max_running = 0  # the most tasks that ran at once
        self._throttled_count = 0  # tasks that ever waited THROTTLED
        self._uploads: dict[str, dict[str, Any]] = {}  # upload id -> {filename, policy, path}
        self._outputs: dict[str, tuple[str, bool]] = {}  # output token -> (task id, expired)
        self._minted: dict[str, int] = {}  # task id -> output URLs minted so far
        self._throttled: set[str] = set()  # task ids waiting for a slot
        self._cancelled: set[str] = set()

    @property
    def prefix(self) -> str:
        return f"/{self.name}"

    # ---- HTTP ---------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        path, method = request.path, request.method
        if path.startswith("/_upload/") and method == "POST":
            return self._receive_upload(path.removeprefix("/_upload/"), request)
        if path.startswith("/_stored/") and method == "GET":
            return self._stored(path.removeprefix("/_stored/"))
        if path.startswith("/_outputs/") and method == "GET":
            return self._output(path.removeprefix("/_outputs/"))
        if path == "/_sim/config" and method in ("GET", "POST"):
            return self._config(request)
        routes = {
            ("POST", "/v1/uploads"): self._create_upload,
            ("POST", "/v1/video_to_video"): self._create_task,
            ("GET", ORGANIZATION_PATH): self._organization,
        }
        handler = routes.get((method, path))
        task_id = path.removeprefix("/v1/tasks/") if path.startswith("/v1/tasks/") else None
        if handler is None and task_id is None:
            return self._error(404, f"Not found: {method} {path}")
        refusal = self._check_headers(request)
        if refusal is not None:
            return refusal
        if handler is not None:
            return handler(request)
        if method == "GET" and task_id:
            return self._task(task_id)
        if method == "DELETE" and task_id:
            return self._cancel(task_id)
        return self._error(405, f"Method {method} not allowed")

    @staticmethod
    def _organization(request: Request) -> Response:
        """``GET /v1/organization``: the account's credit balance and limits (free; proves the key)."""
        return json_response({"creditBalance": 100000, "tier": {"maxMonthlyCreditSpend": 1000000, "models": {}}, "usage": {"models": {}}})

    @staticmethod
    def _error(status: int, message: str, issues: list[dict[str, Any]] | None = None) -> Response:
        body: dict[str, Any] = {"error": message}
        if issues is not None:
            body["issues"] = issues
        return json_response(body, status)

    def _invalid(self, problems: list[tuple[str, str]]) -> Response:
        issues = [{"path": path.split(".") if path else [], "message": message} for path, message in problems]
        return self._error(400, "Validation of body failed", issues)

    def _check_headers(self, request: Request) -> Response | None:
        key = self.ctx.settings.key_for(self.name)
        given = request.header("Authorization") or ""
        expected = f"Bearer {key.api_key}" if key is not None else ""
        if not key or not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
            return self._error(401, "Invalid API key or API key not provided")
        version = request.header("X-Runway-Version")
        if version != API_VERSION:
            return self._error(400, f"The X-Runway-Version header must be set to a supported version ({API_VERSION}); got {version or 'none'}")
        return None

    def _json(self, request: Request) -> Any:
        content_type = (request.header("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise ValueError(f"Content-Type must be application/json, got {content_type or 'none'}")
        try:
            return json.loads(request.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed JSON body: {exc}") from exc

    def _json_object(self, request: Request) -> dict[str, Any] | Response:
        """The request's JSON object, or Runway's validation answer when it is not one."""
        try:
            body = self._json(request)
        except ValueError as exc:
            return self._invalid([("", str(exc))])
        if not isinstance(body, dict):
            return self._invalid([("", "the body must be a JSON object")])
        return body

    def _config(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                changes = json.loads(request.body or b"{}")
            except json.JSONDecodeError:
                return self._error(400, "config must be JSON")
            if not isinstance(changes, dict) or set(changes) - {"concurrency", "resetCounts"}:
                return self._error(400, "config takes only `concurrency` and `resetCounts`")
            value = changes.get("concurrency", self.concurrency)
            if not _is_int(value) or value < 1:
                return self._error(400, "concurrency must be a whole number of at least 1")
            with self._slots:
                self.concurrency = value
                if changes.get("resetCounts") is True:
                    self._max_running = self._throttled_count = 0
                self._slots.notify_all()
        with self._slots:
            return json_response({"concurrency": self.concurrency, "maxRunning": self._max_running, "throttled": self._throttled_count})

    # ---- uploads ------------------------------------------------------------------------------

    def _create_upload(self, request: Request) -> Response:
        body = self._json_object(request)
        if isinstance(body, Response):
            return body
        problems = [("", message) for message in unknown_fields(body, UPLOAD_FIELDS)]
        filename = body.get("filename")
        if not isinstance(filename, str) or not filename or "/" in filename:
            problems.append(("filename", "filename is required: a file name without a path"))
        if body.get("type") != "ephemeral":
            problems.append(("type", "type must be ephemeral"))
        if problems:
            return self._invalid(problems)
        upload_id = str(uuid.uuid4())
        policy = uuid.uuid4().hex
        self._uploads[upload_id] = {"filename": filename, "policy": policy, "path": None}
        return json_response(
            {
                "uploadUrl": f"{self.ctx.public_url()}{self.prefix}/_upload/{upload_id}",
                "fields": {"key": f"uploads/{upload_id}/{filename}", "policy": policy},
                "runwayUri": f"runway://uploads/{upload_id}",
            }
        )

    def _receive_upload(self, upload_id: str, request: Request) -> Response:
        """The presigned POST target: the ticket's fields unchanged, then the file, last."""
        ticket = self._uploads.get(upload_id)
        if ticket is None:
            return Response(status=403, body=b"<Error><Code>AccessDenied</Code><Message>Unknown upload</Message></Error>", content_type="application/xml")
        content_type = request.header("Content-Type") or ""
        if not content_type.lower().startswith("multipart/form-data"):
            return self._s3_error(400, "MalformedPOSTRequest", "The body of your POST request is not well-formed multipart/form-data.")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + request.body)
        parts = list(message.iter_parts()) if message.is_multipart() else []
        names = [part.get_param("name", header="content-disposition") for part in parts]
        if not parts or names[-1] != "file":
            return self._s3_error(400, "InvalidArgument", "POST requires exactly one file upload per request, as the last field.")
        fields = {str(name): part.get_content() for name, part in zip(names[:-1], parts[:-1], strict=True)}
        expected = {"key": f"uploads/{upload_id}/{ticket['filename']}", "policy": ticket["policy"]}
        if fields != expected:
            return self._s3_error(
                403, "AccessDenied", f"Invalid according to Policy: the form fields must be exactly the ticket's ({', '.join(sorted(expected))})"
            )
        data = parts[-1].get_payload(decode=True)
        if not isinstance(data, bytes) or not data:
            return self._s3_error(400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size.")
        path = self.ctx.task_dir(f"upload-{upload_id}") / "file"
        path.write_bytes(data)
        ticket["path"] = path
        return Response(status=204)

    @staticmethod
    def _s3_error(status: int, code: str, message: str) -> Response:
        body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        return Response(status=status, body=body.encode("utf-8"), content_type="application/xml")

    def _stored(self, upload_id: str) -> Response:
        """An uploaded file, for the simulator's own edit worker."""
        ticket = self._uploads.get(upload_id)
        if ticket is None or ticket["path"] is None:
            return Response(status=404, body=b"no such upload\n", content_type="text/plain")
        return Response(status=200, content_type="video/mp4", file=ticket["path"])

    def _uploaded(self, uri: str) -> bool:
        ticket = self._uploads.get(uri.removeprefix("runway://uploads/"))
        return uri.startswith("runway://uploads/") and ticket is not None and ticket["path"] is not None

    def _fetchable(self, uri: str) -> str:
        """Where the worker reads an input from: the stored upload, or the URL itself."""
        if uri.startswith("runway://uploads/"):
            return f"{self.ctx.own_url}{self.prefix}/_stored/{uri.removeprefix('runway://uploads/')}"
        return uri

    # ---- tasks --------------------------------------------------------------------------------

    def _uri_problem(self, value: Any, where: str) -> tuple[str, str] | None:
        if not isinstance(value, str) or not value:
            return (where, f"{where} is required: an https URL, a runway:// URI or a data URI")
        if value.startswith("runway://"):
            return None if self._uploaded(value) else (where, f"{where}: the runway:// URI names no uploaded file (uploads live 24 h)")
        if value.startswith("data:"):
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or len(value) > 2048:
            return (where, f"{where} must be an https URL of at most 2048 characters, a runway:// URI or a data URI")
        return None

    def validate(self, body: dict[str, Any]) -> list[tuple[str, str]]:
        """Every problem with a video_to_video body, each with the path of its field."""
        problems = [("", message) for message in unknown_fields(body, BODY_FIELDS)]
        if body.get("model") != MODEL:
            problems.append(("model", f"model must be {MODEL}"))
        uri_problem = self._uri_problem(body.get("videoUri"), "videoUri")
        if uri_problem:
            problems.append(uri_problem)
        prompt = body.get("promptText")
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip() or _units(prompt) > MAX_PROMPT_UNITS):
            problems.append(("promptText", f"promptText must be a non-empty string of at most {MAX_PROMPT_UNITS} UTF-16 code units"))
        keyframes = body.get("keyframes")
        if keyframes is not None:
            if not isinstance(keyframes, list) or not 1 <= len(keyframes) <= MAX_KEYFRAMES:
                problems.append(("keyframes", f"keyframes must be a list of 1 to {MAX_KEYFRAMES} items"))
            else:
                for index, frame in enumerate(keyframes):
                    problems.extend(self._keyframe_problems(frame, f"keyframes.{index}"))
        seed = body.get("seed")
        if seed is not None and (not _is_int(seed) or not 0 <= seed <= MAX_SEED):
            problems.append(("seed", f"seed must be an integer from 0 to {MAX_SEED}"))
        ratio = body.get("ratio")
        if ratio is not None and ratio not in RATIOS:
            problems.append(("ratio", f"ratio must be one of {', '.join(RATIOS)}"))
        target = body.get("targetAspectRatio")
        if target is not None and (not isinstance(target, str) or not re.fullmatch(r"\d+:\d+", target)):
            problems.append(("targetAspectRatio", "targetAspectRatio must be W:H"))
        moderation = body.get("contentModeration")
        if moderation is not None:
            if not isinstance(moderation, dict):
                problems.append(("contentModeration", "contentModeration must be an object"))
            else:
                problems.extend(("contentModeration", message) for message in unknown_fields(moderation, {"publicFigureThreshold"}, where="contentModeration."))
                if moderation.get("publicFigureThreshold", "auto") not in ("auto", "low"):
                    problems.append(("contentModeration.publicFigureThreshold", "publicFigureThreshold must be auto or low"))
        return problems

    def _keyframe_problems(self, frame: Any, where: str) -> list[tuple[str, str]]:
        if not isinstance(frame, dict):
            return [(where, f"{where} must be an object")]
        problems = [(where, message) for message in unknown_fields(frame, KEYFRAME_FIELDS, where=f"{where}.")]
        uri_problem = self._uri_problem(frame.get("uri"), f"{where}.uri")
        if uri_problem:
            problems.append(uri_problem)
        seconds, at = frame.get("seconds"), frame.get("at")
        if (seconds is None) == (at is None):
            problems.append((where, f"{where} needs exactly one of seconds and at"))
        elif seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= 30):
            problems.append((f"{where}.seconds", "seconds must be a number from 0 to 30"))
        elif at is not None and at not in ("first", "last"):
            problems.append((f"{where}.at", "at must be first or last"))
        return problems

    def _create_task(self, request: Request) -> Response:
        body = self._json_object(request)
        if isinstance(body, Response):
            return body
        problems = self.validate(body)
        if problems:
            return self._invalid(problems)
        prompt = body.get("promptText")
        rule = self.ctx.faults.pick_submit(self.name, prompt)
        if rule is not None:
            status, message = SUBMIT_FAULT_ANSWERS[rule.fault]
            return self._error(status, message)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        task = Task(provider=self.name, request=body, headers=headers, callback_status="none")
        rules = self.ctx.faults.pick_task(self.name, prompt)
        task.faults = sorted(rules)
        self.ctx.store.add(task)
        self.ctx.start_task(task, rules, lambda: self._run(task, rules))
        self.ctx.before_answer(task, rules)
        spoiled = self.ctx.spoiled_answer(task, rules, lambda: self._error(500, MSG_SERVER))
        return spoiled if spoiled is not None else json_response({"id": task.task_id})

    def _task(self, task_id: str) -> Response:
        task = self.ctx.store.get(task_id)
        if task is None or task.provider != self.name:
            return self._error(404, "Task not found")
        with self.ctx.store.lock:
            state, error, created = task.state, dict(task.error or {}), task.created_at
        document: dict[str, Any] = {"id": task.task_id, "createdAt": iso(created)}
        if task_id in self._cancelled:
            document["status"] = "CANCELLED"
        elif state == "queued":
            document["status"] = "THROTTLED" if task_id in self._throttled else "PENDING"
        elif state == "running":
            document.update(status="RUNNING", progress=self._progress(task))
        elif state == "success":
            document.update(status="SUCCEEDED", output=[self._mint_output(task)])
        else:
            document.update(status="FAILED", failure=error.get("msg", "The task failed."), failureCode=error.get("code", DEFAULT_FAILURE_CODE))
        return json_response(document)

    def _progress(self, task: Task) -> float:
        """A made-up progress that grows while the edit runs, never reaching 1 before it ends."""
        elapsed = (utc_now() - task.created_at).total_seconds()
        return round(min(0.95, elapsed / 20), 2)

    def _mint_output(self, task: Task) -> str:
        """A fresh output URL, as Runway gives on every fetch of a task. With ``expired_result`` the
        first one minted has expired by the time it is used."""
        with self.ctx.store.lock:
            count = self._minted.get(task.task_id, 0)
            self._minted[task.task_id] = count + 1
            token = uuid.uuid4().hex
            self._outputs[token] = (task.task_id, count == 0 and "expired_result" in task.faults)
        return f"{self.ctx.public_url()}{self.prefix}/_outputs/{quote(token)}/{VIDEO_FILE}"

    def _output(self, rest: str) -> Response:
        token, _, name = rest.partition("/")
        found = self._outputs.get(token)
        task = self.ctx.store.get(found[0]) if found else None
        if found is None or task is None or name != VIDEO_FILE:
            return self._s3_error(404, "NoSuchKey", "The specified key does not exist.")
        if found[1]:
            return self._s3_error(403, "AccessDenied", "Request has expired")
        path = task.files.get(VIDEO_FILE)
        if path is None or not path.is_file():
            return self._s3_error(404, "NoSuchKey", "The specified key does not exist.")
        return Response(status=200, content_type="video/mp4", file=path)

    def _cancel(self, task_id: str) -> Response:
        """Runway's cancel: a task not yet finished ends CANCELLED (its edit result is dropped)."""
        task = self.ctx.store.get(task_id)
        if task is None or task.provider != self.name:
            return self._error(404, "Task not found")
        with self.ctx.store.lock:
            if task.state in ("queued", "running"):
                self._cancelled.add(task_id)
        with self._slots:
            self._slots.notify_all()
        return Response(status=204)

    # ---- the task ------------------------------------------------------------------------------

    def _take_slot(self, task: Task) -> bool:
        """Wait (THROTTLED) while the account runs ``concurrency`` tasks; False when the task was
        cancelled or discarded, or the server stops, meanwhile."""
        with self._slots:
            if self._running >= self.concurrency:
                self._throttled_count += 1
            while self._running >= self.concurrency:
                self._throttled.add(task.task_id)
                self._slots.wait(0.2)
                if task.discarded or task.task_id in self._cancelled or self.ctx.stop.is_set():
                    self._throttled.discard(task.task_id)
                    return False
            self._throttled.discard(task.task_id)
            self._running += 1
            self._max_running = max(self._max_running, self._running)
            return True

    def _release_slot(self) -> None:
        with self._slots:
            self._running -= 1
            self._slots.notify_all()

    def _run(self, task: Task, rules: dict[str, FaultRule]) -> None:
        if "cancelled" in rules:
            self._cancelled.add(task.task_id)
        if task.task_id in self._cancelled or not self._take_slot(task):
            self._finish_cancelled(task)
            return
        try:
            if not self.ctx.begin(task):
                return
            error = self._edit(task, rules)
        finally:
            self._release_slot()
        if task.task_id in self._cancelled:
            self._finish_cancelled(task)
            return
        files = self.ctx.result_files(task, (VIDEO_FILE,)) if error is None else {}
        self.ctx.record_outcome(task, {name: rule for name, rule in rules.items() if name != "expired_result"}, error, files, {"video": VIDEO_FILE})

    def _edit(self, task: Task, rules: dict[str, FaultRule]) -> dict[str, Any] | None:
        if "generation_failure" in rules:
            given = rules["generation_failure"].msg
            code = given if given and FAILURE_CODE_PATTERN.fullmatch(given) else DEFAULT_FAILURE_CODE
            message = given if given and code != given else "The input was flagged by content moderation."
            return {"code": code, "msg": message}
        ratio = task.request.get("ratio")
        error = self.ctx.edit_task(task, rules, self._fetchable(task.request["videoUri"]), aspect_ratio=CROP.get(ratio) if ratio else None, failure_code=500)
        if error is not None:
            # The shared editor's codes are HTTP-like; Runway names its failures.
            return {"code": "ASSET.INVALID" if error["code"] != 500 else "INTERNAL", "msg": error["msg"]}
        return None

    def _finish_cancelled(self, task: Task) -> None:
        with self.ctx.store.lock:
            task.state = "cancelled"
            task.completed_at = utc_now()
        task.called_back.set()
