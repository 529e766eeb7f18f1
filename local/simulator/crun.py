"""The crun.ai wire protocol for ``runway/gen-4-aleph``, served under ``/crun``.

Written from crun's pages only (the "Runway Gen4 Aleph" create page, "Get Task Info", and
/work/shared/providers.md) and never from the product's client code.

Wire facts implemented here:
- ``POST /api/v1/client/job/CreateTask`` with ``x-api-key: <key>`` and
  ``{"model": "runway/gen-4-aleph", "callback_url": ..., "input": {...}}``; the answer is
  ``{"code": 200, "message": "success", "data": {"task_id": "task_..."}}``.
- Errors are ``{"code", "message", "data": null}`` (``message``, not kie's ``msg``); a validation
  error is ``{"code": 422, "message": "Missing Params or Type Error", "errors": [...]}``.
- ``GET /api/v1/client/job/TaskInfo?task_id=`` answers ``data{task_id, provider, model_version,
  status: pending|running|success|failed, param, create_at, result: null|{code, message,
  media_urls, usage}, credits, duration_s, complete_at, source}``.
- The callback is "consistent with the data object returned by the task status query": sent bare
  by default, or wrapped in ``{code, message, data}`` when the ``crun_callback_wrapped`` setting
  is on (the docs leave it open, so the client must take both).

The top-level body holds exactly ``model``, ``callback_url`` (optional) and ``input``: any other
field (``callBackUrl``, ``webhook_url``: no callback would ever come) is refused with the 422.
The ``input`` fields of this model are undocumented; the simulator accepts the ones providers.md
assumes, listed once in ``INPUT_FIELDS`` -- ``prompt`` (required, at most 1000 characters,
Runway's limit), ``video_url`` (required), ``img_urls`` (list of URLs), ``aspect_ratio``,
``seed`` -- and refuses any other with the 422 too (crun's own client sends only the fields the
model's ``input_schema`` permits), so a sidecar's ``providerOptions`` that adds one is refused.

Read at run time by crun's own client (CrunTeam/crun-agent-skills, ``runtime/crun_cli.py``), so
served here too:
- ``GET /api/v1/client/job/Models/runway/gen-4-aleph`` answers the model with an ``input_schema``,
  a JSON schema (``type: object``, ``properties``, ``required``) of those same fields.
- ``POST /api/v1/client/job/EstimateTask`` ``{model, input}`` answers
  ``data{estimated_credits, balance, affordable}`` and creates nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from local.simulator.context import VIDEO_FILE, SimContext
from local.simulator.faults import FOREIGN_RESULT_URL, FaultRule
from local.simulator.fields import unknown_fields
from local.simulator.store import Task
from local.simulator.web import Request, Response, json_response

log = logging.getLogger("local.simulator")

CREATE_PATH = "/api/v1/client/job/CreateTask"
TASK_INFO_PATH = "/api/v1/client/job/TaskInfo"
ESTIMATE_PATH = "/api/v1/client/job/EstimateTask"
MODELS_PATH = "/api/v1/client/job/Models/"
MODEL = "runway/gen-4-aleph"
# What EstimateTask quotes for one edit, and the balance it reports (none under insufficient_credits).
CREDITS_PER_TASK = 60
BALANCE = 100000
BODY_FIELDS = frozenset({"model", "callback_url", "input"})
# The simulator's reading of the model's undocumented ``input`` (see the module docstring).
INPUT_FIELDS = frozenset({"prompt", "video_url", "img_urls", "aspect_ratio", "seed"})
ASPECT_RATIOS = ("16:9", "9:16", "4:3", "3:4", "1:1", "21:9")
MAX_PROMPT_CHARS = 1000
MAX_SEED = 4294967295
MSG_VALIDATION = "Missing Params or Type Error"
GENERATION_FAILED = 501

# crun's descriptions of its codes, used as the answers' messages.
MESSAGES = {
    401: "Unauthorized - Authentication credentials are missing or invalid",
    402: "Insufficient Credits - Account does not have enough credits to perform the operation",
    404: "Not Found - The requested resource or endpoint does not exist",
    429: "Rate Limited - Request limit has been exceeded for this resource",
    455: "Service Unavailable - The system is under maintenance",
    505: "Feature Disabled - The requested feature is currently disabled",
    500: "Server Error - An unexpected error occurred while processing the request",
}
# The shared submit faults, in crun's terms: fault -> (HTTP status, body code). Rate limits and
# server errors carry their HTTP status; other refusals follow the ``mirror_http_status`` setting.
SUBMIT_FAULT_CODES: dict[str, tuple[int | None, int]] = {
    "submit_429": (429, 429),
    "submit_500": (500, 500),
    "insufficient_credits": (None, 402),
    "maintenance": (None, 455),
    "feature_disabled": (None, 505),
}
STATUS = {"queued": "pending", "running": "running", "success": "success", "failed": "failed"}


def input_schema() -> dict[str, Any]:
    """The model's ``input_schema`` as ``GET Models/<model>`` answers it: a JSON schema of the
    fields ``INPUT_FIELDS`` names (the simulator's reading; crun's real one is read at run time)."""
    return {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "maxLength": MAX_PROMPT_CHARS, "description": "What to change in the video"},
            "video_url": {"type": "string", "format": "uri", "description": "The input video (only its first 5 s are used)"},
            "img_urls": {"type": "array", "items": {"type": "string", "format": "uri"}, "maxItems": 1, "description": "A reference image"},
            "aspect_ratio": {"type": "string", "enum": list(ASPECT_RATIOS)},
            "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
        },
        "required": ["prompt", "video_url"],
        "additionalProperties": False,
    }


def _is_http_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def validate_create(body: dict[str, Any], fields: frozenset[str] = BODY_FIELDS) -> list[str]:
    """Every problem with a CreateTask (or EstimateTask: ``fields`` without ``callback_url``)
    body, each naming its field (answered with code 422).

    Plain http is accepted for URLs because locally the presigned URLs point at 127.0.0.1.
    """
    problems = unknown_fields(body, fields)
    model = body.get("model")
    if model is None:
        problems.append("model is required")
    elif model != MODEL:
        problems.append(f"model must be {MODEL}")
    callback = body.get("callback_url")
    if callback is not None and not _is_http_url(callback):
        problems.append("callback_url must be an http(s) URL")
    given = body.get("input")
    if given is None:
        problems.append("input is required")
        return problems
    if not isinstance(given, dict):
        problems.append("input must be an object")
        return problems
    problems.extend(unknown_fields(given, INPUT_FIELDS, where="input."))
    prompt = given.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append("input.prompt is required and must be a non-empty string")
    elif len(prompt) > MAX_PROMPT_CHARS:
        problems.append(f"input.prompt must be at most {MAX_PROMPT_CHARS} characters, got {len(prompt)}")
    if not _is_http_url(given.get("video_url")):
        problems.append("input.video_url is required and must be an http(s) URL")
    images = given.get("img_urls")
    if images is not None and (not isinstance(images, list) or not all(_is_http_url(url) for url in images)):
        problems.append("input.img_urls must be a list of http(s) URLs")
    aspect = given.get("aspect_ratio")
    if aspect is not None and aspect not in ASPECT_RATIOS:
        problems.append(f"input.aspect_ratio must be one of {', '.join(ASPECT_RATIOS)}")
    seed = given.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        problems.append(f"input.seed must be an integer from 0 to {MAX_SEED}")
    return problems


def _epoch(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


class CrunProtocol:
    """crun.ai's unified job API, for the one model it offers here."""

    def __init__(self, ctx: SimContext, name: str = "crun") -> None:
        self.name = name
        self.ctx = ctx

    @property
    def prefix(self) -> str:
        return f"/{self.name}"

    # ---- HTTP ---------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        routes = {CREATE_PATH: ("POST", self._create), TASK_INFO_PATH: ("GET", self._task_info), ESTIMATE_PATH: ("POST", self._estimate)}
        route = ("GET", self._model) if request.path.startswith(MODELS_PATH) else routes.get(request.path)
        if route is None:
            return self._answer(404, MESSAGES[404], http_status=404)
        method, handler = route
        if request.method != method:
            return self._answer(405, f"Method {request.method} not allowed", http_status=405)
        if not self._authorized(request):
            return self._answer(401, MESSAGES[401])
        return handler(request)

    def _answer(self, code: int, message: str, data: Any = None, *, errors: list[str] | None = None, http_status: int | None = None) -> Response:
        if http_status is None:
            http_status = code if self.ctx.settings.mirror_http_status and 100 <= code <= 599 else 200
        payload: dict[str, Any] = {"code": code, "message": message}
        if errors is not None:
            payload["errors"] = errors
        else:
            payload["data"] = data
        return json_response(payload, http_status)

    def _authorized(self, request: Request) -> bool:
        key = self.ctx.settings.key_for(self.name)
        given = request.header("x-api-key") or ""
        return key is not None and bool(given) and hmac.compare_digest(given.encode("utf-8"), key.api_key.encode("utf-8"))

    def _model(self, request: Request) -> Response:
        """``GET Models/<model>``: the model, with its ``input_schema``."""
        model = request.path[len(MODELS_PATH) :]
        if model != MODEL:
            return self._answer(404, f"Model not found: {model}", http_status=404)
        data = {"model": MODEL, "model_type": "video", "provider": "Runway", "operations": ["video-edit"], "input_schema": input_schema()}
        return self._answer(200, "success", data)

    def _estimate(self, request: Request) -> Response:
        """``EstimateTask {model, input}``: the cost and whether the account can pay, charging
        nothing and creating nothing. The ``insufficient_credits`` fault makes it unaffordable
        (a client that skips the estimate meets the same fault as a 402 at CreateTask)."""
        body = self._json_body(request)
        if isinstance(body, Response):
            return body
        problems = validate_create(body, BODY_FIELDS - {"callback_url"})
        if problems:
            return self._answer(422, MSG_VALIDATION, errors=problems)
        # Only an insufficient_credits rule is consulted (and used up) here: the other submit
        # faults (429, 500) are CreateTask's, and must not be spent on the free estimate.
        credit_rules = any(rule["fault"] == "insufficient_credits" for rule in self.ctx.faults.to_json())
        rule = self.ctx.faults.pick_submit(self.name, body["input"]["prompt"]) if credit_rules else None
        balance = 0 if rule is not None and rule.fault == "insufficient_credits" else BALANCE
        return self._answer(200, "success", {"estimated_credits": CREDITS_PER_TASK, "balance": balance, "affordable": balance >= CREDITS_PER_TASK})

    def _json_body(self, request: Request) -> dict[str, Any] | Response:
        content_type = (request.header("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return self._answer(422, MSG_VALIDATION, errors=[f"Content-Type must be application/json, got {content_type or 'none'}"])
        try:
            body = json.loads(request.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return self._answer(422, MSG_VALIDATION, errors=[f"malformed JSON body: {exc}"])
        if not isinstance(body, dict):
            return self._answer(422, MSG_VALIDATION, errors=["the body must be a JSON object"])
        return body

    def _create(self, request: Request) -> Response:
        body = self._json_body(request)
        if isinstance(body, Response):
            return body
        problems = validate_create(body)
        if problems:
            return self._answer(422, MSG_VALIDATION, errors=problems)

        prompt: str = body["input"]["prompt"]
        rule = self.ctx.faults.pick_submit(self.name, prompt)
        if rule is not None:
            http_status, code = SUBMIT_FAULT_CODES[rule.fault]
            return self._answer(code, MESSAGES[code], http_status=http_status)

        headers = {k: v for k, v in request.headers.items() if k.lower() != "x-api-key"}
        task = Task(provider=self.name, request=body, headers=headers, task_id=f"task_{uuid.uuid4().hex}")
        task.callback_shape = "wrapped" if self.ctx.settings.crun_callback_wrapped else "bare"
        rules = self.ctx.faults.pick_task(self.name, prompt)
        task.faults = sorted(rules)
        if not body.get("callback_url"):
            task.callback_status = "none"
        self.ctx.store.add(task)
        self.ctx.start_task(task, rules, lambda: self._run(task, rules))
        self.ctx.before_answer(task, rules)
        spoiled = self.ctx.spoiled_answer(task, rules, lambda: self._answer(500, MESSAGES[500], http_status=500))
        return spoiled if spoiled is not None else self._answer(200, "success", {"task_id": task.task_id})

    def _task_info(self, request: Request) -> Response:
        task_id = request.query_value("task_id")
        if not task_id:
            return self._answer(422, MSG_VALIDATION, errors=["task_id is required"])
        task = self.ctx.store.get(task_id)
        if task is None or task.provider != self.name:
            return self._answer(404, f"Task not found: {task_id}")
        return self._answer(200, "success", self._task_data(task))

    def _task_data(self, task: Task, *, foreign: bool = False) -> dict[str, Any]:
        """The task object of TaskInfo's ``data`` (and of the callback)."""
        with self.ctx.store.lock:
            state = task.state
            request = task.request
            error = dict(task.error or {})
            video = (task.result_urls or {}).get("video")
            created, completed = task.created_at, task.completed_at
        result: dict[str, Any] | None = None
        if state == "success":
            result = {"code": 200, "message": "success", "media_urls": [FOREIGN_RESULT_URL if foreign else video], "usage": {}}
        elif state == "failed":
            result = {"code": error.get("code", GENERATION_FAILED), "message": error.get("msg", ""), "media_urls": []}
        done = state in ("success", "failed")
        return {
            "task_id": task.task_id,
            "provider": "Runway",
            "model_version": "gen-4-aleph",
            "status": STATUS.get(state, "pending"),
            "param": {"model": request.get("model"), "callback_url": request.get("callback_url"), "input": request.get("input")},
            "create_at": _epoch(created),
            "result": result,
            "credits": 0,
            "duration_s": round((completed - created).total_seconds(), 3) if done and completed else None,
            "complete_at": _epoch(completed) if done else None,
            "source": "api",
        }

    # ---- the task ------------------------------------------------------------------------------

    def _run(self, task: Task, rules: dict[str, FaultRule]) -> None:
        """Worker body: fetch, edit, record the outcome, then call back."""
        if not self.ctx.begin(task):
            return
        given = task.request["input"]
        error = self.ctx.edit_task(task, rules, given["video_url"], aspect_ratio=given.get("aspect_ratio"), failure_code=GENERATION_FAILED)
        if error is not None and error["code"] != 500:
            error["code"] = GENERATION_FAILED  # crun reports any failed generation as 501; its own faults as 500
        files = self.ctx.result_files(task, (VIDEO_FILE,)) if error is None else {}
        self.ctx.record_outcome(task, rules, error, files, {"video": VIDEO_FILE})
        self.ctx.start_callbacks(task, rules, task.request.get("callback_url"), lambda url: self._deliver(task, rules, url))

    def _deliver(self, task: Task, rules: dict[str, FaultRule], url: str) -> None:
        if not self.ctx.wait_callback_delay(rules):
            self.ctx.finish_callbacks(task, "abandoned")
            return
        objects = [self._task_data(task, foreign="foreign_result_host" in rules)] * (2 if "duplicate_callback" in rules else 1)
        if "stale_callback" in rules:
            # A progress report that lost the race with the final one: the task object as it was while running.
            objects.append({**self._task_data(task), "status": STATUS["running"], "result": None, "duration_s": None, "complete_at": None})
        wrapped = task.callback_shape == "wrapped"
        payloads = [{"code": 200, "message": "success", "data": data} if wrapped else data for data in objects]
        self.ctx.post_callbacks(task, url, payloads)
        with self.ctx.store.lock:
            self.ctx.finish_callbacks(task, "sent" if task.callbacks else "abandoned")
