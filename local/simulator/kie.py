"""The kie.ai Aleph wire protocol, also spoken by apikley (a kie.ai clone).

Written from the providers' pages only (kie.ai "Runway Aleph API" quick start, apikley
"Generate Aleph Video" + OpenAPI, and /work/shared/providers.md) and never from the product's
client code, so a client that misreads the protocol fails against this server.

Wire facts implemented here:
- ``POST /api/v1/aleph/generate`` with ``Authorization: Bearer <key>`` and a JSON body.
- Every answer is ``{"code", "msg", "data"}`` and the status lives in the *body* ``code``; the HTTP
  status is 200 except for rate-limit / server-error faults (429 / 500) and the gateway's own
  HTML pages (502 / 504, ``submit_5xx_after_create``).
- ``GET /api/v1/aleph/record-info?taskId=`` for polling; ``paramJson`` is a JSON *string*.
  apikley too: its generate page names ``record-detail``, which providers.md reads as the page's
  error (that path belongs to another model), so ``record-detail`` is answered like any path the
  API does not have: HTTP 404 with ``{"code": 404, ...}`` (apikley's OpenAPI lists body code 404,
  "the requested resource or endpoint does not exist").
- A generate body may carry only the documented fields (``GENERATE_FIELDS``); any other is
  refused with ``{"code": 422, "msg": ..., "data": null}`` naming it (and, for a near miss such as
  ``watermark``, the documented ``waterMark``), as the documents' "Validation Error" reads. No task.
- Callbacks come in two documented shapes (A and B), chosen by the ``callback_shape`` setting.
- ``POST /api/v1/common/download-url {"url"}`` answers ``data`` = a fresh download link valid
  20 minutes, for the provider's own result links only (others: 422). With ``expired_result``
  the first links answer 404 and ``expireFlag`` is 1; the fresh ones work. Like kie's CDN, the
  fresh links refuse Python's default user agent with 403 ("error code: 1010").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from local.simulator.context import COVER_FILE, VIDEO_FILE, SimContext
from local.simulator.editor import MSG_SERVER_ERROR
from local.simulator.faults import FOREIGN_RESULT_URL, SUBMIT_FAULTS, FaultRule
from local.simulator.fields import unknown_fields
from local.simulator.store import Task, iso
from local.simulator.web import Request, Response, json_response, text_response

log = logging.getLogger("local.simulator")

GENERATE_PATH = "/api/v1/aleph/generate"
RECORD_INFO_PATH = "/api/v1/aleph/record-info"
DOWNLOAD_URL_PATH = "/api/v1/common/download-url"
CREDIT_PATH = "/api/v1/chat/credit"  # the account's credits: {"code": 200, "msg": "success", "data": <credits>}
CREDITS = 10000
# Where the fresh links download-url hands out are served (under the provider's prefix), and for how long.
FRESH_FILES_PATH = "/_files/"
FRESH_LINK_SECONDS = 20 * 60
RESULT_FILES_PATH = "/_sim/files/"
CONTENT_TYPES = {".mp4": "video/mp4", ".webm": "video/webm", ".mov": "video/quicktime", ".png": "image/png"}
# The generate body's fields, as kie's and apikley's pages (and apikley's OpenAPI) list them.
GENERATE_FIELDS = frozenset({"prompt", "videoUrl", "callBackUrl", "waterMark", "uploadCn", "aspectRatio", "seed", "referenceImage"})

ASPECT_RATIOS = ("16:9", "9:16", "4:3", "3:4", "1:1", "21:9")
MAX_PROMPT_CHARS = 2048
MAX_PROMPT_MSG = "Your prompt/negative prompt cannot exceed 2048 characters. Please check if your input is too long."


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def validate_generate(body: dict[str, Any]) -> list[str]:
    """Every problem with a generate body, each naming its field (answered with code 422).

    Optional fields may be absent or null; when present they must have the documented type.
    Plain http is accepted for URLs because locally the presigned URLs point at 127.0.0.1.
    """
    problems = unknown_fields(body, GENERATE_FIELDS)
    prompt = body.get("prompt")
    if prompt is None:
        problems.append("prompt is required")
    elif not isinstance(prompt, str):
        problems.append("prompt must be a string")
    elif not prompt.strip():
        problems.append("prompt must not be empty")
    elif len(prompt) > MAX_PROMPT_CHARS:
        problems.append(f"prompt is {len(prompt)} characters long. {MAX_PROMPT_MSG}")

    video_url = body.get("videoUrl")
    if video_url is None:
        problems.append("videoUrl is required")
    elif not isinstance(video_url, str):
        problems.append("videoUrl must be a string")
    elif not _is_http_url(video_url):
        problems.append("videoUrl must be an http(s) URL")

    callback = body.get("callBackUrl")
    if callback is not None:
        if not isinstance(callback, str):
            problems.append("callBackUrl must be a string")
        elif callback and not _is_http_url(callback):
            problems.append("callBackUrl must be an http(s) URL")

    for name in ("waterMark", "referenceImage"):
        if body.get(name) is not None and not isinstance(body[name], str):
            problems.append(f"{name} must be a string")
    if body.get("uploadCn") is not None and not isinstance(body["uploadCn"], bool):
        problems.append("uploadCn must be a boolean")
    aspect = body.get("aspectRatio")
    if aspect is not None and aspect not in ASPECT_RATIOS:
        problems.append(f"aspectRatio must be one of {', '.join(ASPECT_RATIOS)}")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        problems.append("seed must be an integer")
    return problems


class KieProtocol:
    """One kie-protocol provider served under ``/<name>`` (``/kie``, ``/apikley``)."""

    def __init__(self, name: str, ctx: SimContext, *, signs_callbacks: bool = False) -> None:
        self.name = name
        self.ctx = ctx
        # Only kie documents webhook signing (X-Webhook-Timestamp / X-Webhook-Signature).
        self.signs_callbacks = signs_callbacks

    @property
    def prefix(self) -> str:
        return f"/{self.name}"

    # ---- HTTP ---------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        if request.path.startswith(FRESH_FILES_PATH):
            return self._fresh_file(request)
        routes = {
            GENERATE_PATH: ("POST", self._generate),
            RECORD_INFO_PATH: ("GET", self._record_info),
            DOWNLOAD_URL_PATH: ("POST", self._download_url),
            CREDIT_PATH: ("GET", self._credit),
        }
        route = routes.get(request.path)
        if route is None:
            return json_response({"code": 404, "msg": f"Not Found: {request.path}", "data": None}, 404)
        method, handler = route
        if request.method != method:
            return json_response({"code": 405, "msg": f"Method {request.method} not allowed", "data": None}, 405)
        if not self._authorized(request):
            return self._answer(401, "Unauthorized: missing or invalid API key (Authorization: Bearer <key>)")
        return handler(request)

    def _answer(self, code: int, msg: str, data: Any = None, http_status: int | None = None) -> Response:
        if http_status is None:
            http_status = code if self.ctx.settings.mirror_http_status and 100 <= code <= 599 else 200
        return json_response({"code": code, "msg": msg, "data": data}, http_status)

    def _authorized(self, request: Request) -> bool:
        key = self.ctx.settings.key_for(self.name)
        scheme, _, token = (request.header("Authorization") or "").partition(" ")
        return key is not None and scheme.lower() == "bearer" and hmac.compare_digest(token.encode("utf-8"), key.api_key.encode("utf-8"))

    def _generate(self, request: Request) -> Response:
        content_type = (request.header("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return self._answer(400, f"Content-Type must be application/json, got {content_type or 'none'}")
        try:
            body = json.loads(request.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return self._answer(400, f"Malformed JSON in request body: {exc}")
        if not isinstance(body, dict):
            return self._answer(400, "Request body must be a JSON object")
        problems = validate_generate(body)
        if problems:
            return self._answer(422, "; ".join(problems))

        prompt: str = body["prompt"]
        rule = self.ctx.faults.pick_submit(self.name, prompt)
        if rule is not None:
            http_status, code, msg = SUBMIT_FAULTS[rule.fault]
            return self._answer(code, msg, None, http_status if http_status != 200 else None)

        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        task = Task(provider=self.name, request=body, headers=headers)
        task.callback_shape = self.ctx.settings.next_callback_shape()
        rules = self.ctx.faults.pick_task(self.name, prompt)
        task.faults = sorted(rules)
        if not body.get("callBackUrl"):
            task.callback_status = "none"
        self.ctx.store.add(task)
        self.ctx.start_task(task, rules, lambda: self._run(task, rules))
        self.ctx.before_answer(task, rules)
        spoiled = self.ctx.spoiled_answer(task, rules, lambda: self._answer(500, SUBMIT_FAULTS["submit_500"][2], http_status=500))
        return spoiled if spoiled is not None else self._answer(200, "success", {"taskId": task.task_id})

    def _credit(self, request: Request) -> Response:
        """``GET /api/v1/chat/credit``: the account's remaining credits (free; proves the key)."""
        return self._answer(200, "success", CREDITS)

    def _record_info(self, request: Request) -> Response:
        task_id = request.query_value("taskId")
        if not task_id:
            return self._answer(422, "taskId is required")
        task = self.ctx.store.get(task_id)
        if task is None or task.provider != self.name:
            return self._answer(404, f"Task not found: {task_id}")
        with self.ctx.store.lock:
            success = task.state == "success"
            failed = task.state == "failed"
            data = {
                "taskId": task.task_id,
                "paramJson": json.dumps(task.request, ensure_ascii=False, separators=(",", ":")),
                "response": (
                    {
                        "taskId": task.task_id,
                        "resultVideoUrl": (task.result_urls or {}).get("video"),
                        "resultImageUrl": (task.result_urls or {}).get("image"),
                    }
                    if success
                    else None
                ),
                # apikley's failure example has completeTime null; only successes complete.
                "completeTime": iso(task.completed_at) if success else None,
                "createTime": iso(task.created_at),
                "successFlag": 1 if success else 0,
                "errorCode": (task.error or {}).get("code", 0) if failed else 0,
                "errorMessage": (task.error or {}).get("msg", "") if failed else "",
                "expireFlag": 1 if task.expired else 0,
            }
        return self._answer(200, "success", data)

    def _download_url(self, request: Request) -> Response:
        """``download-url {"url"}``: a fresh link, valid 20 minutes, for one of this provider's own
        result links (expired or not); any other URL is refused with 422."""
        try:
            body = json.loads(request.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return self._answer(400, f"Malformed JSON in request body: {exc}")
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url:
            return self._answer(422, "url is required")
        found = self._own_result(url)
        if found is None:
            return self._answer(422, "The url is not a result file generated by this service")
        task_id, name = found
        expires = int(time.time()) + FRESH_LINK_SECONDS
        return self._answer(200, "success", f"{self.ctx.public_url()}{self.prefix}{FRESH_FILES_PATH}{quote(task_id)}/{quote(name)}?expires={expires}")

    def _own_result(self, url: str) -> tuple[str, str] | None:
        """The task id and file name of a result link this provider made (first or fresh), if it is one."""
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" != self.ctx.public_url():
            return None
        for base in (RESULT_FILES_PATH, self.prefix + FRESH_FILES_PATH):
            if parts.path.startswith(base):
                task_id, _, name = unquote(parts.path[len(base) :]).partition("/")
                task = self.ctx.store.get(task_id)
                if task is not None and task.provider == self.name and name in task.files:
                    return task_id, name
        return None

    def _fresh_file(self, request: Request) -> Response:
        """A fresh link: served until it expires, expired result or not. Like kie's CDN, it
        refuses Python's default user agents (403, "error code: 1010")."""
        agent = (request.header("User-Agent") or "").lower()
        if not agent or agent.startswith(("python-", "python/")):
            return text_response("error code: 1010", 403)
        expires = request.query_value("expires") or ""
        if not expires.isdigit() or int(expires) < time.time():
            return text_response("link expired\n", 403)
        task_id, _, name = request.path[len(FRESH_FILES_PATH) :].partition("/")
        task = self.ctx.store.get(task_id)
        if task is None or task.provider != self.name:
            return text_response("no such result\n", 404)
        with self.ctx.store.lock:
            path = task.files.get(name)
        if path is None or not path.is_file():
            return text_response("no such result\n", 404)
        content_type = next((value for suffix, value in CONTENT_TYPES.items() if name.endswith(suffix)), "application/octet-stream")
        return Response(status=200, content_type=content_type, file=path)

    # ---- the task ------------------------------------------------------------------------------

    def _run(self, task: Task, rules: dict[str, FaultRule]) -> None:
        """Worker body: fetch, edit, record the outcome, then call back."""
        if not self.ctx.begin(task):
            return
        error = self.ctx.edit_task(task, rules, task.request["videoUrl"], aspect_ratio=task.request.get("aspectRatio"), failure_code=400)
        files = self.ctx.result_files(task, (VIDEO_FILE, COVER_FILE)) if error is None else {}
        self.ctx.record_outcome(task, rules, error, files, {"video": VIDEO_FILE, "image": COVER_FILE})
        self.ctx.start_callbacks(task, rules, task.request.get("callBackUrl"), lambda url: self._deliver(task, rules, url))

    def _deliver(self, task: Task, rules: dict[str, FaultRule], url: str) -> None:
        if not self.ctx.wait_callback_delay(rules):
            self.ctx.finish_callbacks(task, "abandoned")
            return
        payloads = [self._callback_payload(task, foreign="foreign_result_host" in rules)] * (2 if "duplicate_callback" in rules else 1)
        if "stale_callback" in rules:
            payloads.append(self._stale_payload(task))
        self.ctx.post_callbacks(task, url, payloads, headers=self._signature_headers(task.task_id))
        with self.ctx.store.lock:
            self.ctx.finish_callbacks(task, "sent" if task.callbacks else "abandoned")

    def _callback_payload(self, task: Task, *, foreign: bool) -> dict[str, Any]:
        with self.ctx.store.lock:
            result_urls = dict(task.result_urls or {})
            error = dict(task.error or {})
            shape = task.callback_shape
        if foreign:  # what a forged or compromised callback could carry
            result_urls = {"video": FOREIGN_RESULT_URL, "image": FOREIGN_RESULT_URL}
        if error:
            if shape == "A":
                return {"code": error["code"], "msg": error["msg"], "data": None, "taskId": task.task_id}
            # The docs show no failure example for shape B; this is our reading.
            return {"code": error["code"], "msg": error["msg"], "data": {"task_id": task.task_id}}
        if shape == "A":
            return {
                "code": 200,
                "msg": "success",
                "data": {"result_video_url": result_urls["video"], "result_image_url": result_urls["image"]},
                "taskId": task.task_id,
            }
        return {
            "code": 200,
            "msg": "All generated successfully.",
            "data": {
                "task_id": task.task_id,
                "video_id": task.video_id,
                "video_url": result_urls["video"],
                "image_url": result_urls["image"],
            },
        }

    def _stale_payload(self, task: Task) -> dict[str, Any]:
        """What a stale callback looks like here: kie calls back only when a task ends, so a
        failure of an earlier attempt (a server error), in the task's shape, after the real one."""
        if task.callback_shape == "A":
            return {"code": 500, "msg": MSG_SERVER_ERROR, "data": None, "taskId": task.task_id}
        return {"code": 500, "msg": MSG_SERVER_ERROR, "data": {"task_id": task.task_id}}

    def _signature_headers(self, task_id: str) -> dict[str, str]:
        """kie's optional signing: base64(HMAC-SHA256(key, taskId + "." + timestamp))."""
        key = self.ctx.settings.key_for(self.name)
        if not self.signs_callbacks or key is None or key.webhook_hmac_key is None:
            return {}
        timestamp = str(int(time.time()))
        digest = hmac.new(key.webhook_hmac_key.encode("utf-8"), f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
        return {"X-Webhook-Timestamp": timestamp, "X-Webhook-Signature": base64.b64encode(digest).decode("ascii")}
