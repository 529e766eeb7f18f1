"""Replicate's HTTP API for ``runwayml/gen4-aleph``, served under ``/replicate``.

Written from Replicate's pages (HTTP API reference, "Receive webhooks", "Verify webhooks") and
/work/shared/providers.md, never from the product's client code.

Wire facts implemented here:
- ``POST /v1/models/runwayml/gen4-aleph/predictions`` with ``Authorization: Bearer <token>`` and
  ``{"input": {...}, "webhook": <url>, "webhook_events_filter": [...]}``; answered 201 with the
  prediction object ``{id, model, input, logs, output, error, status, created_at, started_at,
  completed_at, urls{get, cancel, web}, metrics}``.
- ``GET /v1/predictions/{id}``: ``status`` starting | processing | succeeded | failed | canceled;
  ``output`` the result URL, ``error`` the failure text.
- ``GET /v1/webhooks/default/secret`` answers ``{"key": "whsec_<base64>"}``: one secret per
  account (here: per API token), made on first use.
- Webhooks POST the prediction object, signed the Standard Webhooks way: ``webhook-id``,
  ``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``
  keyed with the base64-decoded part of the secret after ``whsec_``. The filter's ``start`` event
  is sent when the prediction starts and ``completed`` when it ends (no filter: ``completed``);
  the edit makes its one output at the end, so ``output`` and ``logs`` add no deliveries.
- Errors are problem documents ``{"title", "detail", "status"}``; a body or ``input`` field the
  model does not document is refused with the 422 ``Input validation failed`` and ``invalid_fields``.
- Results are served under ``/replicate/delivery/<id>/...`` (standing in for ``replicate.delivery``).

Faults: ``generation_failure`` (status failed, the rule's message as ``error``), ``drop_callback``,
``duplicate_callback`` (the same delivery twice, same ``webhook-id``: a replay), ``bad_signature``
(signed with a secret that is not the account's), ``delay_callback``, ``expired_result``,
``foreign_result_host`` and the shared submit and answer faults.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

from local.simulator.context import VIDEO_FILE, SimContext
from local.simulator.faults import FOREIGN_RESULT_URL, FaultRule
from local.simulator.fields import unknown_fields
from local.simulator.store import Task
from local.simulator.web import Request, Response, json_response, text_response

MODEL = "runwayml/gen4-aleph"
CREATE_PATH = f"/v1/models/{MODEL}/predictions"
PREDICTIONS_PREFIX = "/v1/predictions/"
SECRET_PATH = "/v1/webhooks/default/secret"
ACCOUNT_PATH = "/v1/account"  # the token's account: {type, username, name, github_url}
DELIVERY_PREFIX = "/delivery/"

BODY_FIELDS = frozenset({"input", "webhook", "webhook_events_filter"})
INPUT_FIELDS = frozenset({"prompt", "video", "aspect_ratio", "seed", "reference_image"})
EVENTS = frozenset({"start", "output", "logs", "completed"})
ASPECT_RATIOS = ("16:9", "9:16", "4:3", "3:4", "1:1", "21:9")
STATUS = {"queued": "starting", "running": "processing", "success": "succeeded", "failed": "failed"}
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"

# Replicate's problem documents for the shared submit faults: fault -> (status, title, detail).
SUBMIT_FAULT_PROBLEMS: dict[str, tuple[int, str, str]] = {
    "submit_429": (429, "Request was throttled.", "Request was throttled. Expected available in 1 second."),
    "submit_500": (500, "Internal Server Error", "An unexpected error occurred."),
    "insufficient_credits": (402, "Insufficient credit", "You have insufficient credit to run this model. Go to the billing page to purchase credit."),
}


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    return json_response({"title": title, "detail": detail, "status": status, **extra}, status)


def _is_http_url(value: Any) -> bool:
    # Plain http too: locally the presigned URLs and the callback API are on 127.0.0.1.
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def validate_create(body: dict[str, Any]) -> list[dict[str, str]]:
    """Every problem with a create body, as Replicate's ``invalid_fields`` entries."""
    problems = [{"type": "additional_property_not_allowed", "field": "(root)", "description": text} for text in unknown_fields(body, BODY_FIELDS)]
    webhook = body.get("webhook")
    if webhook is not None and not _is_http_url(webhook):
        problems.append({"type": "format", "field": "webhook", "description": "webhook must be an http(s) URL"})
    events = body.get("webhook_events_filter")
    if events is not None and (not isinstance(events, list) or not all(isinstance(event, str) and event in EVENTS for event in events)):
        allowed = ", ".join(sorted(EVENTS))
        problems.append({"type": "enum", "field": "webhook_events_filter", "description": f"webhook_events_filter must be a list of {allowed}"})
    given = body.get("input")
    if not isinstance(given, dict):
        problems.append({"type": "required", "field": "input", "description": "input is required and must be an object"})
        return problems
    extra = unknown_fields(given, INPUT_FIELDS, where="input.")
    problems += [{"type": "additional_property_not_allowed", "field": "input", "description": text} for text in extra]
    prompt = given.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append({"type": "required", "field": "input.prompt", "description": "prompt is required and must be a non-empty string"})
    if not _is_http_url(given.get("video")):
        problems.append({"type": "format", "field": "input.video", "description": "video is required and must be a URI"})
    reference = given.get("reference_image")
    if reference is not None and not _is_http_url(reference):
        problems.append({"type": "format", "field": "input.reference_image", "description": "reference_image must be a URI"})
    aspect = given.get("aspect_ratio")
    if aspect is not None and aspect not in ASPECT_RATIOS:
        problems.append({"type": "enum", "field": "input.aspect_ratio", "description": f"aspect_ratio must be one of {', '.join(ASPECT_RATIOS)}"})
    seed = given.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        problems.append({"type": "invalid_type", "field": "input.seed", "description": "seed must be an integer"})
    return problems


def webhook_headers(secret: str, body: bytes, message_id: str, timestamp: int) -> dict[str, str]:
    """The Standard Webhooks headers of one delivery of ``body``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp), "webhook-signature": "v1," + base64.b64encode(digest).decode()}


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}Z"


class ReplicateProtocol:
    """Replicate's predictions API for the one model it offers here."""

    def __init__(self, ctx: SimContext, name: str = "replicate") -> None:
        self.name = name
        self.ctx = ctx
        self._lock = threading.Lock()
        self._secrets: dict[str, str] = {}  # API token -> the account's webhook secret
        self._task_secret: dict[str, str] = {}  # prediction id -> its account's secret

    @property
    def prefix(self) -> str:
        return f"/{self.name}"

    def secret_for(self, token: str) -> str:
        """The account's webhook signing secret, made on first use."""
        with self._lock:
            return self._secrets.setdefault(token, new_secret())

    # ---- HTTP ---------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        if request.path.startswith(DELIVERY_PREFIX) and request.method == "GET":
            return self._delivery(request.path[len(DELIVERY_PREFIX) :])  # a CDN: no token
        routes = {CREATE_PATH: "POST", SECRET_PATH: "GET", ACCOUNT_PATH: "GET"}
        expected = "GET" if request.path.startswith(PREDICTIONS_PREFIX) else routes.get(request.path)
        if expected is None:
            return problem(404, "Not found", f"no such endpoint: {request.path}")
        if request.method != expected:
            return problem(405, "Method not allowed", f"{request.method} is not allowed here")
        token = self._token(request)
        if token is None:
            return problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        if request.path == ACCOUNT_PATH:  # free; proves the token
            return json_response({"type": "organization", "username": "aleph-simulator", "name": "Aleph simulator", "github_url": None})
        if request.path == SECRET_PATH:
            return json_response({"key": self.secret_for(token)})
        if request.path == CREATE_PATH:
            return self._create(request, token)
        return self._get(request.path[len(PREDICTIONS_PREFIX) :])

    def _token(self, request: Request) -> str | None:
        key = self.ctx.settings.key_for(self.name)
        scheme, _, given = (request.header("Authorization") or "").partition(" ")
        if key is None or scheme != "Bearer" or not given or not hmac.compare_digest(given.encode(), key.api_key.encode()):
            return None
        return given

    def _create(self, request: Request, token: str) -> Response:
        try:
            body = json.loads(request.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return problem(400, "Invalid JSON", f"the request body is not JSON: {exc}")
        if not isinstance(body, dict):
            return problem(400, "Invalid JSON", "the request body must be a JSON object")
        invalid = validate_create(body)
        if invalid:
            detail = "".join(f"- {entry['field']}: {entry['description']}\n" for entry in invalid)
            return problem(422, "Input validation failed", detail, invalid_fields=invalid)

        prompt: str = body["input"]["prompt"]
        rule = self.ctx.faults.pick_submit(self.name, prompt)
        if rule is not None:
            return problem(*SUBMIT_FAULT_PROBLEMS[rule.fault])

        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        prediction_id = "".join(secrets.choice(ID_ALPHABET) for _ in range(26))
        task = Task(provider=self.name, request=body, headers=headers, task_id=prediction_id)
        rules = self.ctx.faults.pick_task(self.name, prompt)
        task.faults = sorted(rules)
        if not body.get("webhook"):
            task.callback_status = "none"
        with self._lock:
            self._task_secret[prediction_id] = self._secrets.setdefault(token, new_secret())
        self.ctx.store.add(task)
        self.ctx.start_task(task, rules, lambda: self._run(task, rules))
        self.ctx.before_answer(task, rules)
        spoiled = self.ctx.spoiled_answer(task, rules, lambda: problem(500, "Internal Server Error", "An unexpected error occurred."))
        return spoiled if spoiled is not None else json_response(self._prediction(task), 201)

    def _get(self, prediction_id: str) -> Response:
        task = self.ctx.store.get(prediction_id)
        if task is None or task.provider != self.name:
            return problem(404, "Not found", "The requested resource could not be found.")
        return json_response(self._prediction(task))

    def _delivery(self, rest: str) -> Response:
        task_id, _, name = rest.partition("/")
        task = self.ctx.store.get(task_id)
        with self.ctx.store.lock:
            path = task.files.get(name) if task is not None and task.provider == self.name else None
            expired = task is not None and task.expired
        if path is None or expired or not path.is_file():
            return text_response("not found\n", 404)
        return Response(status=200, content_type="video/mp4", file=path)

    def _prediction(self, task: Task, *, foreign: bool = False) -> dict[str, Any]:
        with self.ctx.store.lock:
            state = task.state
            error = dict(task.error or {})
            request = task.request
            created, completed = task.created_at, task.completed_at
            answered = task.answered_at
        base = f"{self.ctx.public_url()}{self.prefix}"
        output = None
        if state == "success":
            output = FOREIGN_RESULT_URL if foreign else f"{base}{DELIVERY_PREFIX}{quote(task.task_id)}/{VIDEO_FILE}"
        return {
            "id": task.task_id,
            "model": MODEL,
            "version": "hidden",
            "input": request.get("input"),
            "logs": "",
            "output": output,
            "data_removed": False,
            "error": error.get("msg") if state == "failed" else None,
            "status": STATUS.get(state, "starting"),
            "created_at": _iso(created),
            "started_at": _iso(answered or created) if state != "queued" else None,
            "completed_at": _iso(completed) if state in ("success", "failed") else None,
            "source": "api",
            "urls": {
                "get": f"{base}{PREDICTIONS_PREFIX}{task.task_id}",
                "cancel": f"{base}{PREDICTIONS_PREFIX}{task.task_id}/cancel",
                "web": f"https://replicate.com/p/{task.task_id}",
            },
            "metrics": {"predict_time": round((completed - created).total_seconds(), 3)} if completed else {},
        }

    # ---- the prediction ------------------------------------------------------------------------

    def _events(self, task: Task) -> frozenset[str]:
        events = task.request.get("webhook_events_filter")
        return frozenset({"completed"}) if events is None else frozenset(events)

    def _run(self, task: Task, rules: dict[str, FaultRule]) -> None:
        """Worker body: (start webhook), fetch, edit, record the outcome, then the completed webhook."""
        if not self.ctx.begin(task):
            return
        webhook = task.request.get("webhook")
        if webhook and "start" in self._events(task) and self.ctx.undeliverable(task, rules, webhook) is None:
            self._post(task, rules, str(webhook), [self._prediction(task)])
        given = task.request["input"]
        error = self.ctx.edit_task(task, rules, given["video"], aspect_ratio=given.get("aspect_ratio"), failure_code=400)
        files = self.ctx.result_files(task, (VIDEO_FILE,)) if error is None else {}
        self.ctx.record_outcome(task, rules, error, files, {"video": VIDEO_FILE})
        url = webhook if "completed" in self._events(task) else None
        self.ctx.start_callbacks(task, rules, url, lambda target: self._deliver(task, rules, target))

    def _deliver(self, task: Task, rules: dict[str, FaultRule], url: str) -> None:
        if not self.ctx.wait_callback_delay(rules):
            self.ctx.finish_callbacks(task, "abandoned")
            return
        prediction = self._prediction(task, foreign="foreign_result_host" in rules)
        # A duplicate is the same delivery again (same webhook-id), the way Replicate retries one.
        self._post(task, rules, url, [prediction] * (2 if "duplicate_callback" in rules else 1))
        with self.ctx.store.lock:
            self.ctx.finish_callbacks(task, "sent" if task.callbacks else "abandoned")

    def _post(self, task: Task, rules: dict[str, FaultRule], url: str, payloads: list[dict[str, Any]]) -> None:
        """POST signed deliveries of ``payloads`` (identical ones share one webhook-id)."""
        with self._lock:
            secret = new_secret() if "bad_signature" in rules else self._task_secret[task.task_id]
        message_id = f"msg_{uuid.uuid4().hex}"
        for payload in payloads:
            # The bytes post_json sends (json.dumps, ensure_ascii=False, UTF-8): what is signed is what is sent.
            body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            headers = webhook_headers(secret, body, message_id, int(time.time()))
            self.ctx.post_callbacks(task, url, [payload], headers=headers)
