"""The crun.ai protocol for ``runway/gen-4-aleph``.

Create ``POST /api/v1/client/job/CreateTask`` with ``x-api-key`` and
``{"model", "callback_url", "input": {...}}``; poll ``GET /api/v1/client/job/TaskInfo?task_id=``
(``status`` pending|running|success|failed, ``result{code, message, media_urls}``). Answers carry
``{"code", "message", "data"}`` (``message``, not kie's ``msg``); validation errors add ``errors``.
The callback is "consistent with the data object of the status query": accepted bare
(``{task_id, status, result, ...}``) and wrapped in ``{code, message, data}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import STAGE_PROVIDER, JobError
from ..sidecar import Sidecar
from .base import (
    COMMON_FIELDS,
    CallbackInvalid,
    Outcome,
    Provider,
    ProviderDocs,
    ProviderError,
    SubmitRequest,
    VideoInfo,
    merge_provider_options,
)

CREATE_PATH = "/api/v1/client/job/CreateTask"
TASK_INFO_PATH = "/api/v1/client/job/TaskInfo"

# crun documents no `input` schema for this model. The names follow crun's other video-edit model
# (`prompt`, `video_url`, `img_urls`) and its common fields (`aspect_ratio`, `seed`): an inference
# (providers.md). This table is the one place that maps sidecar fields to `input` fields; a sidecar's
# `providerOptions` adds or overrides `input` fields when crun's real names differ.
INPUT_FIELDS: dict[str, str] = {
    "prompt": "prompt",
    "video": "video_url",
    "referenceImages": "img_urls",
    "aspectRatio": "aspect_ratio",
    "seed": "seed",
}
SUPPORTED_FIELDS = COMMON_FIELDS | set(INPUT_FIELDS)
# Never from providerOptions: the pipeline sets these (top-level names included, so an option
# cannot smuggle a second callback into `input` either).
MANAGED_FIELDS = frozenset({"prompt", "video_url", "callback_url", "model"})

# Runway's own limits for Aleph (crun forwards to Runway): a prompt of at most 1000 characters,
# one reference image, and MP4/MOV/WebM containers. Checked here so such a job fails before any
# money is spent.
MAX_PROMPT_CHARS = 1000
VIDEO_EXTENSIONS = ("mp4", "mov", "webm", "m4v")

# crun's codes: 401 bad key, 402 no credits, 404 no such task/endpoint, 422 validation, 505
# feature disabled and 501 generation failed refuse; 429 and 455 (maintenance) mean "not taken,
# later"; 500 means "later" for a poll, and is ambiguous for a submit (see Provider.submit_failure).
RETRYABLE_CODES = frozenset({429, 455, 500, 502, 503, 504})
GENERATION_FAILED = 501


def crun_input(request: SubmitRequest) -> dict[str, Any]:
    """The `input` object for a submission, per ``INPUT_FIELDS``, with ``providerOptions`` merged in."""
    sidecar = request.sidecar
    values: dict[str, Any] = {
        "prompt": sidecar.prompt,
        "video": request.video_url,
        "referenceImages": list(request.reference_image_urls) or None,
        "aspectRatio": sidecar.aspect_ratio,
        "seed": sidecar.seed,
    }
    body = {INPUT_FIELDS[name]: value for name, value in values.items() if value is not None}
    return merge_provider_options(body, sidecar.provider_options, MANAGED_FIELDS)


@dataclass
class CrunProtocol(Provider):
    docs: ClassVar[ProviderDocs | None] = ProviderDocs(
        fields=frozenset(SUPPORTED_FIELDS) - COMMON_FIELDS,
        video_formats=VIDEO_EXTENSIONS,
        max_video_bytes=None,
        max_prompt_chars=MAX_PROMPT_CHARS,
        limits="one reference image; `input` field names are inferred (providerOptions can set crun's own names)",
        price="per task, in crun credits (see its pricing page); no cost in dollars is reported back",
    )

    def check(self, sidecar: Sidecar, model: str, video: VideoInfo | None) -> None:
        self.check_declared(sidecar, model, video, managed=MANAGED_FIELDS)

    def request_body(self, request: SubmitRequest) -> dict[str, Any]:
        return {"model": request.model, "callback_url": request.callback_url, "input": crun_input(request)}

    def submit(self, request: SubmitRequest) -> str:
        status, body = self._send("POST", CREATE_PATH, json=self.request_body(request), headers=self._auth())
        if status == 200 and isinstance(body, dict) and body.get("code") == 200:
            data = body.get("data")
            task_id = data.get("task_id") if isinstance(data, dict) else None
            if isinstance(task_id, str) and task_id:
                return task_id
            # A success code without a task id: a task may exist, we cannot tell which one.
            raise ProviderError("ambiguous", "no_task_id", f"{self.id} answered success without a task_id", status)
        raise self.submit_failure(status, body)

    def poll(self, task_id: str) -> Outcome:
        status, body = self._send("GET", TASK_INFO_PATH, params={"task_id": task_id}, headers=self._auth())
        if not (status == 200 and isinstance(body, dict) and body.get("code") == 200 and isinstance(body.get("data"), dict)):
            raise self.classify_error(status, body)
        try:
            return self._outcome(body["data"], task_id)
        except CallbackInvalid as exc:
            raise ProviderError("retryable", "incomplete", f"{self.id}: {exc}", status) from exc

    def parse_callback(self, body: bytes, headers: Mapping[str, str]) -> Outcome:
        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or a number past int()'s digit limit
            raise CallbackInvalid("the callback body is not JSON") from exc
        if not isinstance(document, dict):
            raise CallbackInvalid("the callback is not a JSON object")
        if "status" in document or "task_id" in document:
            return self._outcome(document, None)  # bare: the status query's data object
        if "code" not in document:
            raise CallbackInvalid("the callback is neither a task object nor a {code, message, data} envelope")
        code, data = document.get("code"), document.get("data")
        if isinstance(data, dict):
            return self._outcome(data, None)
        if data is None and _is_int(code) and code != 200:
            return Outcome("failed", error=self._failure(code, document.get("message")))
        raise CallbackInvalid("the wrapped callback has no `data` object")

    def classify_error(self, status: int | None, body: Any) -> ProviderError:
        code = body.get("code") if isinstance(body, dict) else None
        effective = code if _is_int(code) and code != 200 else status
        text = _message(body) or f"HTTP {status}"
        if effective in RETRYABLE_CODES or (isinstance(effective, int) and effective >= 500 and effective not in (GENERATION_FAILED, 505)):
            return ProviderError("retryable", str(effective), f"{self.id}: {text}", status)
        if effective == 200 or effective is None:
            # HTTP 200 without a readable body: the request may have been taken.
            return ProviderError("ambiguous", "unreadable", f"{self.id} gave an unreadable answer ({text})", status)
        return ProviderError("refused", str(effective), f"{self.id}: {text}", status)

    # ---- helpers ---------------------------------------------------------------------------------

    def _outcome(self, data: Mapping[str, Any], expected_task_id: str | None) -> Outcome:
        """Read a task object (TaskInfo's `data`, or a callback)."""
        task_id = data.get("task_id", expected_task_id)
        if task_id is not None and not isinstance(task_id, str):
            raise CallbackInvalid("the task id is not a string")
        status = data.get("status")
        result = data.get("result")
        if result is not None and not isinstance(result, dict):
            raise CallbackInvalid("the task's `result` is not an object")
        result = result or {}
        if status in ("pending", "running"):
            return Outcome("running", task_id)
        if status == "success":
            urls = result.get("media_urls")
            if not isinstance(urls, list) or not urls or not all(isinstance(url, str) and url for url in urls):
                raise CallbackInvalid("a successful task without `result.media_urls`")
            return Outcome("succeeded", task_id, tuple(urls))
        if status == "failed":
            return Outcome("failed", task_id, error=self._failure(result.get("code"), result.get("message")))
        raise CallbackInvalid(f"unknown task status {status!r}; expected pending, running, success or failed")

    def _failure(self, code: Any, message: Any) -> JobError:
        """crun's own message for a failed task (501 = generation failed), its code in the details."""
        text = message if isinstance(message, str) and message else f"the task failed at {self.id}"
        # A 500 inside a failed task is crun's own fault: trying the edit again could work.
        retryable = _is_int(code) and code in RETRYABLE_CODES
        return JobError("generation_failed", text, STAGE_PROVIDER, retryable=retryable, details={"providerCode": code} if _is_int(code) else {})

    def _auth(self) -> dict[str, str]:
        return {"x-api-key": self.api_key()}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _message(body: Any) -> str:
    """crun's `message`, with a validation error's `errors` list appended when there is one."""
    if not isinstance(body, dict):
        return ""
    message = body.get("message")
    text = message if isinstance(message, str) else ""
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        details = "; ".join(str(error) for error in errors[:10])
        text = f"{text}: {details}" if text else details
    return text
