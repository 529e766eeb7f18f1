"""The Runware wire protocol for Runway Aleph 1 (``runway:2@1``) and Aleph 2.0 (``runway:aleph@2.0``).

Written from Runware's pages only (the two model pages, the webhooks, task-polling and errors
pages as recorded in /work/shared/providers.md), never from the product's client code.

Wire facts implemented here:
- One endpoint, ``POST /v1``; the body is always a JSON *array* of tasks. Auth is
  ``Authorization: Bearer <key>`` or a first task ``{"taskType": "authentication", "apiKey": ...}``.
- Success: HTTP 200 ``{"data": [...]}``. Failure: ``{"errors": [{code, message, parameter,
  taskType, taskUUID}]}`` with HTTP 400 (validation, and ``conflictTaskUUID`` for a taskUUID
  already taken: no second task), 401 (key), 402 (balance), 404 (unknown task), 429 or 500.
- ``videoInference`` with ``deliveryMethod: async`` is acknowledged at once; each result is
  POSTed to ``webhookURL`` as ``{"data": [{taskType, taskUUID, videoUUID, videoURL, seed, cost}]}``
  as soon as it is ready (one webhook per result); non-2xx replies are retried.
- ``getResponse`` answers one item per result: ``status`` ``processing``, ``success`` or ``error``.
- The edit: Aleph 2.0 edits the whole clip (2-30 s), Aleph 1 its first 5 s; ``outputFormat``
  picks the container (MP4 and MOV as H.264, WEBM as VP9); ``cost`` is $0.28 per output second
  (Aleph 2.0's published price; the Aleph 1 page has none, the simulator uses the same).
"""

from __future__ import annotations

import hmac
import json
import logging
import random
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from local.simulator.context import SimContext
from local.simulator.editor import MSG_SERVER_ERROR, EditFailure, edit_video, fetch_input, probe_seconds
from local.simulator.faults import FOREIGN_RESULT_URL, FaultRule
from local.simulator.fields import documented_name
from local.simulator.store import Task, utc_now
from local.simulator.web import Request, Response, json_response

log = logging.getLogger("local.simulator")

ALEPH_1 = "runway:2@1"
ALEPH_2 = "runway:aleph@2.0"
ALEPH_1_SIZES = ((1280, 720), (720, 1280), (1104, 832), (832, 1104), (960, 960), (1584, 672), (848, 480), (640, 480))
ALEPH_2_SECONDS = (2.0, 30.0)
ALEPH_1_OUTPUT_SECONDS = 5
PRICE_PER_SECOND = 0.28
MAX_INPUT_BYTES = 200 * 1024 * 1024
MAX_IMAGE_BYTES = 20 * 1024 * 1024
WEBHOOK_ATTEMPTS = 3
WEBHOOK_RETRY_SECONDS = 0.5
EXTENSIONS = {"MP4": "mp4", "WEBM": "webm", "MOV": "mov"}

COMMON_FIELDS = {
    "taskType", "taskUUID", "model", "positivePrompt", "inputs", "outputType", "outputFormat", "outputQuality",
    "webhookURL", "deliveryMethod", "uploadEndpoint", "safety", "ttl", "includeCost", "numberResults", "seed", "providerSettings",
}  # fmt: skip
MODEL_FIELDS = {ALEPH_1: COMMON_FIELDS | {"width", "height"}, ALEPH_2: COMMON_FIELDS}
MODEL_INPUTS = {ALEPH_1: {"video", "referenceImages"}, ALEPH_2: {"video", "frameImages"}}
# The one documented provider setting of both Aleph models, as its object path.
PROVIDER_SETTINGS_PATH = ("runway", "contentModeration", "publicFigureThreshold")
PUBLIC_FIGURE_THRESHOLDS = ("auto", "low")

# Submit-time faults, answered the Runware way: (HTTP status, error code, message).
SUBMIT_FAULTS: dict[str, tuple[int, str, str]] = {
    "submit_429": (429, "rateLimitExceeded", "Too many requests. Please slow down."),
    "submit_500": (500, "internalServerError", "An unexpected error occurred. Please try again later."),
    "insufficient_credits": (402, "insufficientCredits", "Insufficient credits. Please top up your account balance to continue."),
}
DEFAULT_FAILURE = ("contentPolicyViolation", "The request was blocked by the content moderation of the model provider.")


def _error(code: str, message: str, *, parameter: str | None = None, task: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if parameter:
        error["parameter"] = parameter
    if task is not None:
        error["taskType"] = task.get("taskType")
        if isinstance(task.get("taskUUID"), str):
            error["taskUUID"] = task["taskUUID"]
    return error


def _conflict(task: dict[str, Any]) -> Response:
    """A ``videoInference`` whose taskUUID is already taken: refused, no new task (Runware's
    ``conflictTaskUUID``; its SDK reads it as proof that the first submit landed)."""
    message = f"A task with taskUUID {task['taskUUID']} already exists. Poll it with getResponse instead of sending it again."
    return json_response({"errors": [_error("conflictTaskUUID", message, parameter="taskUUID", task=task)]}, 400)


def _is_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _is_uuid(value: Any) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def _is_uuid4(value: Any) -> bool:
    return _is_uuid(value) and uuid.UUID(value).version == 4 and uuid.UUID(value).variant == uuid.RFC_4122


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _image_problem(value: Any) -> bool:
    """Images are a UUID, a URL, a data URI or base64; the simulator fetches only URLs."""
    return not isinstance(value, str) or not value.strip()


def validate_video_inference(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Every problem with a videoInference task, in the errors envelope's item form."""
    problems: list[dict[str, Any]] = []

    def bad(code: str, parameter: str, message: str) -> None:
        problems.append(_error(code, message, parameter=parameter, task=task))

    if "taskUUID" not in task:
        bad("missingTaskUUID", "taskUUID", "taskUUID is required.")
    elif not _is_uuid4(task["taskUUID"]):
        bad("invalidTaskUUID", "taskUUID", "taskUUID must be a UUID v4 string.")
    model = task.get("model")
    if model not in MODEL_FIELDS:
        bad("invalidModel", "model", f"Invalid model. Supported video-to-video models here: {ALEPH_1}, {ALEPH_2}.")
        return problems
    for name in sorted(set(task) - MODEL_FIELDS[model]):
        bad("unsupportedParameter", name, f"Parameter {name} is not supported by model {model}{_did_you_mean(name, MODEL_FIELDS[model])}.")
    prompt = task.get("positivePrompt")
    if prompt is None:
        bad("missingPositivePrompt", "positivePrompt", "positivePrompt is required.")
    elif not isinstance(prompt, str) or not 1 <= len(prompt) <= 1000:
        bad("invalidPositivePrompt", "positivePrompt", "positivePrompt must be a string of 1 to 1000 characters.")
    _validate_inputs(task, model, bad)
    _validate_options(task, model, bad)
    return problems


def _validate_inputs(task: dict[str, Any], model: str, bad: Callable[[str, str, str], None]) -> None:
    inputs = task.get("inputs")
    if not isinstance(inputs, dict):
        bad("missingInputs", "inputs", "inputs is required and must be an object.")
    else:
        for name in sorted(set(inputs) - MODEL_INPUTS[model]):
            bad("unsupportedParameter", f"inputs.{name}", f"Input {name} is not supported by model {model}{_did_you_mean(name, MODEL_INPUTS[model])}.")
        video = inputs.get("video")
        if video is None:
            bad("missingVideo", "inputs.video", "inputs.video is required.")
        elif not (_is_url(video) or _is_uuid(video)):
            bad("invalidVideo", "inputs.video", "inputs.video must be a URL or a media UUID.")
        refs = inputs.get("referenceImages")
        if refs is not None and (not isinstance(refs, list) or len(refs) != 1 or any(_image_problem(ref) for ref in refs)):
            bad("invalidReferenceImages", "inputs.referenceImages", "inputs.referenceImages must be an array of exactly 1 image.")
        frames = inputs.get("frameImages")
        if frames is not None and (not isinstance(frames, list) or not frames or any(not _frame_ok(frame) for frame in frames)):
            bad(
                "invalidFrameImages",
                "inputs.frameImages",
                "inputs.frameImages items must be images or {image, frame: first|last|0|-1} or {image, timestamp: 0-30}.",
            )


def _validate_options(task: dict[str, Any], model: str, bad: Callable[[str, str, str], None]) -> None:
    if task.get("outputType", "URL") != "URL":
        bad("invalidOutputType", "outputType", "outputType must be URL.")
    if task.get("outputFormat", "MP4") not in EXTENSIONS:
        bad("invalidOutputFormat", "outputFormat", "outputFormat must be one of MP4, WEBM, MOV.")
    quality = task.get("outputQuality", 95)
    if not _is_int(quality) or not 20 <= quality <= 99:
        bad("invalidOutputQuality", "outputQuality", "outputQuality must be an integer between 20 and 99.")
    if task.get("deliveryMethod", "async") != "async":
        bad("invalidDeliveryMethod", "deliveryMethod", "deliveryMethod must be async for video tasks.")
    for name in ("webhookURL", "uploadEndpoint"):
        if name in task and not _is_url(task[name]):
            bad(f"invalid{name[0].upper()}{name[1:]}", name, f"{name} must be a URI.")
    safety = task.get("safety")
    if safety is not None and (
        not isinstance(safety, dict)
        or set(safety) - {"checkContent", "mode"}
        or not isinstance(safety.get("checkContent", False), bool)
        or safety.get("mode", "none") not in ("none", "fast", "full")
    ):
        bad("invalidSafety", "safety", "safety must be {checkContent: boolean, mode: none|fast|full}.")
    if "ttl" in task and (not _is_int(task["ttl"]) or task["ttl"] < 60):
        bad("invalidTtl", "ttl", "ttl must be an integer of at least 60 seconds.")
    if not isinstance(task.get("includeCost", False), bool):
        bad("invalidIncludeCost", "includeCost", "includeCost must be a boolean.")
    results = task.get("numberResults", 1)
    if not _is_int(results) or not 1 <= results <= 4:
        bad("invalidNumberResults", "numberResults", "numberResults must be an integer between 1 and 4.")
    seed = task.get("seed")
    if seed is not None and (not _is_int(seed) or not 0 <= seed <= 4294967295):
        bad("invalidSeed", "seed", "seed must be an integer between 0 and 4294967295.")
    if model == ALEPH_1 and ("width" in task or "height" in task) and (task.get("width"), task.get("height")) not in ALEPH_1_SIZES:
        sizes = ", ".join(f"{w}x{h}" for w, h in ALEPH_1_SIZES)
        bad("invalidDimensions", "width", f"width and height must be one of: {sizes}.")
    if "providerSettings" in task:
        _validate_provider_settings(task["providerSettings"], bad)


def _did_you_mean(name: str, documented: frozenset[str] | set[str]) -> str:
    suggestion = documented_name(name, documented)
    return f" (did you mean {suggestion}?)" if suggestion else ""


def _validate_provider_settings(settings: Any, bad: Callable[[str, str, str], None]) -> None:
    """``providerSettings`` holds only what the Aleph pages document: an object path
    ``runway.contentModeration.publicFigureThreshold`` (auto|low); every other key is refused."""
    level, path = settings, "providerSettings"
    for step in PROVIDER_SETTINGS_PATH:
        if not isinstance(level, dict):
            bad("invalidProviderSettings", path, f"{path} must be an object.")
            return
        for name in sorted(set(level) - {step}):
            bad("unsupportedParameter", f"{path}.{name}", f"Parameter {path}.{name} is not supported{_did_you_mean(name, {step})}.")
        path = f"{path}.{step}"
        if step not in level:
            return  # the default applies
        level = level[step]
    if level not in PUBLIC_FIGURE_THRESHOLDS:
        bad("invalidProviderSettings", path, "publicFigureThreshold must be auto or low.")


def _frame_ok(frame: Any) -> bool:
    if isinstance(frame, str):
        return bool(frame.strip())
    if not isinstance(frame, dict) or _image_problem(frame.get("image")) or set(frame) - {"image", "frame", "timestamp"}:
        return False
    if "frame" in frame and "timestamp" in frame:
        return False
    if "frame" in frame and frame["frame"] not in ("first", "last", 0, -1):
        return False
    timestamp = frame.get("timestamp", 0)
    return isinstance(timestamp, int | float) and not isinstance(timestamp, bool) and 0 <= timestamp <= 30


class RunwareProtocol:
    """Runware's REST API served under ``/runware``."""

    def __init__(self, ctx: SimContext, name: str = "runware") -> None:
        self.name = name
        self.ctx = ctx

    @property
    def prefix(self) -> str:
        return f"/{self.name}"

    # ---- HTTP ---------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        if request.path != "/v1":
            return json_response({"errors": [_error("notFound", f"Not found: {request.path}")]}, 404)
        if request.method != "POST":
            return json_response({"errors": [_error("methodNotAllowed", "Use POST.")]}, 405)
        try:
            tasks = json.loads(request.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return json_response({"errors": [_error("invalidJSON", "The request body is not valid JSON.")]}, 400)
        if not isinstance(tasks, list) or not tasks or not all(isinstance(task, dict) for task in tasks):
            return json_response({"errors": [_error("invalidRequestBody", "The request body must be a non-empty array of task objects.")]}, 400)
        if not self._authorized(request, tasks):
            message = "Invalid API key. Send it as 'Authorization: Bearer <key>' or in an authentication task."
            return json_response({"errors": [_error("invalidApiKey", message, parameter="apiKey", task=tasks[0])]}, 401)
        data: list[dict[str, Any]] = []
        for task in tasks:
            kind = task.get("taskType")
            if kind == "authentication":
                data.append({"taskType": "authentication", "connectionSessionUUID": str(uuid.uuid4())})
            elif kind == "videoInference":
                answer = self._video_inference(task, request)
                if isinstance(answer, Response):
                    return answer
                data.append(answer)
            elif kind == "getResponse":
                items = self._get_response(task)
                if isinstance(items, Response):
                    return items
                data.extend(items)
            else:
                return json_response({"errors": [_error("unsupportedTaskType", f"Task type {kind!r} is not supported here.", task=task)]}, 400)
        return json_response({"data": data})

    def _authorized(self, request: Request, tasks: list[dict[str, Any]]) -> bool:
        key = self.ctx.settings.key_for(self.name)
        if key is None:
            return False
        scheme, _, token = (request.header("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and token:
            return hmac.compare_digest(token.encode("utf-8"), key.api_key.encode("utf-8"))
        first = tasks[0]
        given = first.get("apiKey") if first.get("taskType") == "authentication" else None
        return isinstance(given, str) and hmac.compare_digest(given.encode("utf-8"), key.api_key.encode("utf-8"))

    def _video_inference(self, body: dict[str, Any], request: Request) -> dict[str, Any] | Response:
        problems = validate_video_inference(body)
        if problems:
            return json_response({"errors": problems}, 400)
        prompt: str = body["positivePrompt"]
        # A taskUUID already taken is refused before anything else, so a resubmit of an accepted
        # task never creates a second one (nor meets a submit fault).
        if self.ctx.store.get(body["taskUUID"]) is not None:
            return _conflict(body)
        rule = self.ctx.faults.pick_submit(self.name, prompt)
        if rule is not None:
            status, code, message = SUBMIT_FAULTS[rule.fault]
            return json_response({"errors": [_error(code, message, task=body)]}, status)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        task = Task(provider=self.name, request=body, headers=headers, task_id=body["taskUUID"])
        rules = self.ctx.faults.pick_task(self.name, prompt)
        task.faults = sorted(rules)
        if not body.get("webhookURL"):
            task.callback_status = "none"
        if not self.ctx.store.add_new(task):  # a concurrent submit of the same taskUUID won
            return _conflict(body)
        self.ctx.start_task(task, rules, lambda: self._run(task, rules))
        self.ctx.before_answer(task, rules)
        spoiled = self.ctx.spoiled_answer(task, rules, lambda: json_response({"errors": [_error(*SUBMIT_FAULTS["submit_500"][1:], task=body)]}, 500))
        return spoiled if spoiled is not None else {"taskType": "videoInference", "taskUUID": task.task_id}

    def _get_response(self, body: dict[str, Any]) -> list[dict[str, Any]] | Response:
        task_id = body.get("taskUUID")
        task = self.ctx.store.get(task_id) if isinstance(task_id, str) else None
        if task is None or task.provider != self.name:
            error = _error("taskFailedOrNotFound", f"No task found with taskUUID {task_id}.", parameter="taskUUID", task=body)
            return json_response({"errors": [error]}, 404)
        with self.ctx.store.lock:
            items = [{"taskType": "videoInference", "taskUUID": task.task_id, "status": "success", **result} for result in task.results]
            if task.state == "failed":
                error = task.error or {}
                items.append({"taskType": "videoInference", "taskUUID": task.task_id, "status": "error", "error": error})
            elif len(items) < task.request.get("numberResults", 1):
                items.append({"taskType": "videoInference", "taskUUID": task.task_id, "status": "processing"})
        return items

    # ---- the task ------------------------------------------------------------------------------

    def _run(self, task: Task, rules: dict[str, FaultRule]) -> None:
        store = self.ctx.store
        if not self.ctx.begin(task):
            return
        body = task.request
        model = body["model"]
        extension = EXTENSIONS[body.get("outputFormat", "MP4")]
        count = body.get("numberResults", 1)
        workdir = self.ctx.task_dir(task.task_id)
        source = workdir / "input"
        try:
            if "generation_failure" in rules:
                raise _Failure(DEFAULT_FAILURE[0], rules["generation_failure"].msg or DEFAULT_FAILURE[1])
            self._fetch_inputs(body["inputs"], source)
            seconds = probe_seconds(source)
            low, high = ALEPH_2_SECONDS
            if model == ALEPH_2 and (seconds is None or not low <= seconds <= high):
                raise _Failure("invalidVideoDuration", "The input video must be between 2 and 30 seconds long.")
            base_seed = body["seed"] if "seed" in body else random.randrange(2**32)
            for index in range(count):
                video_id = str(uuid.uuid4())
                name = f"{video_id}.{extension}"
                output = workdir / name
                size = (body["width"], body["height"]) if "width" in body else None
                edit_video(
                    source,
                    output,
                    None,
                    max_seconds=ALEPH_1_OUTPUT_SECONDS if model == ALEPH_1 else None,
                    size=size,
                    variant=index,
                    quality=body.get("outputQuality"),
                    wrong_container="wrong_container" in rules,
                )
                seed = (base_seed + index) % 2**32  # each result its own seed, the first the one asked for
                result: dict[str, Any] = {
                    "videoUUID": video_id,
                    "videoURL": FOREIGN_RESULT_URL if "foreign_result_host" in rules else self.ctx.file_url(task.task_id, name),
                    "seed": seed,
                }
                if body.get("includeCost"):
                    result["cost"] = round(PRICE_PER_SECOND * (probe_seconds(output) or 0.0), 4)
                with store.lock:
                    task.files[name] = output
                    task.results.append(result)
                    if index == count - 1:
                        task.state = "success"
                        task.completed_at = utc_now()
                        task.expired = "expired_result" in rules
                self._notify(task, rules, {"data": [{"taskType": "videoInference", "taskUUID": task.task_id, **result}]}, final=index == count - 1)
        except (_Failure, EditFailure) as failure:
            code, message = (failure.code, failure.message) if isinstance(failure, _Failure) else ("processingFailed", failure.msg)
            self._fail(task, rules, code, message)
        except Exception:
            log.exception("task %s failed unexpectedly", task.task_id)
            self._fail(task, rules, "processingFailed", MSG_SERVER_ERROR)
        finally:
            source.unlink(missing_ok=True)
        if task.discarded:
            self.ctx.remove_task_files(task.task_id)

    def _fetch_inputs(self, inputs: dict[str, Any], source: Path) -> None:
        video = inputs["video"]
        if not _is_url(video):
            raise _Failure("invalidVideo", "Media UUIDs are not stored in this simulator; pass a URL.")
        try:
            fetch_input(video, source, max_bytes=MAX_INPUT_BYTES)
        except EditFailure as exc:
            raise _Failure("invalidVideo", f"Could not fetch inputs.video: {exc.msg}") from exc
        images = [*inputs.get("referenceImages", ()), *(f if isinstance(f, str) else f["image"] for f in inputs.get("frameImages", ()))]
        for index, image in enumerate(images):
            if not _is_url(image):
                continue  # a UUID, data URI or base64: accepted as it is
            target = source.with_name(f"image-{index}")
            try:
                fetch_input(image, target, max_bytes=MAX_IMAGE_BYTES)
            except EditFailure as exc:
                raise _Failure("invalidImage", f"Could not fetch the image {index + 1}: {exc.msg}") from exc
            finally:
                target.unlink(missing_ok=True)

    def _fail(self, task: Task, rules: dict[str, FaultRule], code: str, message: str) -> None:
        with self.ctx.store.lock:
            task.state = "failed"
            task.error = {"code": code, "message": message}
            task.completed_at = utc_now()
        self._notify(task, rules, {"errors": [{"code": code, "message": message, "taskType": "videoInference", "taskUUID": task.task_id}]}, final=True)

    def _notify(self, task: Task, rules: dict[str, FaultRule], payload: dict[str, Any], *, final: bool) -> None:
        """Send one webhook (one per result); ``final`` marks the task's last one."""
        url = task.request.get("webhookURL")
        with self.ctx.store.lock:
            status = self.ctx.undeliverable(task, rules, url)
            if status is not None:
                self._settle(task, status, final=final)
                return
        self.ctx.spawn(lambda: self._deliver(task, rules, str(url), payload, final=final), name=f"sim-webhook-{task.task_id[:8]}")

    def _deliver(self, task: Task, rules: dict[str, FaultRule], url: str, payload: dict[str, Any], *, final: bool) -> None:
        if not self.ctx.wait_callback_delay(rules):
            self._settle(task, "abandoned", final=final)
            return
        payloads = [payload] * (2 if "duplicate_callback" in rules else 1)
        if final and "stale_callback" in rules:
            # A progress item that lost the race with the results.
            payloads.append({"data": [{"taskType": "videoInference", "taskUUID": task.task_id, "status": "processing"}]})
        # Runware retries a webhook that gets a non-2xx answer.
        self.ctx.post_callbacks(task, url, payloads, attempts=WEBHOOK_ATTEMPTS, retry_seconds=WEBHOOK_RETRY_SECONDS)
        with self.ctx.store.lock:
            self._settle(task, "sent" if task.callbacks else "abandoned", final=final)

    def _settle(self, task: Task, status: str, *, final: bool) -> None:
        if final:
            self.ctx.finish_callbacks(task, status)
        else:
            with self.ctx.store.lock:
                task.callback_status = status


class _Failure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
