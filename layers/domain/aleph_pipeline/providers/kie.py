"""The kie.ai Aleph protocol, spoken by kie.ai and by apikley (a clone on another base URL).

Create ``POST /api/v1/aleph/generate``, poll ``GET /api/v1/aleph/record-info?taskId=``, Bearer
auth, and the status in the body's ``code`` (HTTP 200 can still carry an error). Callbacks come
in two shapes (see ``parse_callback``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import TransientError
from .base import (
    COMMON_FIELDS,
    CallbackInvalid,
    CallbackUnauthorized,
    Outcome,
    Provider,
    ProviderDocs,
    ProviderError,
    SubmitRequest,
    VideoInfo,
    merge_provider_options,
)

if TYPE_CHECKING:  # types only: the sidecar model is built where a sidecar is read, not on every cold path
    from ..sidecar import Sidecar

# Expired or short-lived result links: kie answers a fresh one for its own result URLs.
DOWNLOAD_URL_PATH = "/api/v1/common/download-url"
MAX_VIDEO_BYTES = 10 * 1024 * 1024
MAX_PROMPT_CHARS = 2048
VIDEO_EXTENSIONS = ("mp4", "mov", "avi", "m4v")  # MP4/MOV/AVI per kie; m4v is an MP4 container
SUPPORTED_FIELDS = COMMON_FIELDS | {"aspectRatio", "seed", "referenceImages", "watermark"}
MANAGED_FIELDS = frozenset({"prompt", "videoUrl", "callBackUrl"})

# Body codes that mean "try again later"; everything else that is not 200 is a refusal.
# A signed callback older (or newer) than this is refused: a captured one cannot be replayed later.
SIGNATURE_MAX_AGE_SECONDS = 300
RETRYABLE_CODES = frozenset({429, 455, 500, 502, 503, 504})
# Maintenance, insufficient credits: not now, and not this provider (a chain moves on).
NOT_YOU_CODES = frozenset({455, 402})
SIGNED_TIMESTAMP = re.compile(r"[0-9]{1,12}", re.ASCII)


@dataclass
class KieProtocol(Provider):
    docs: ClassVar[ProviderDocs | None] = ProviderDocs(
        fields=SUPPORTED_FIELDS - COMMON_FIELDS,
        video_formats=VIDEO_EXTENSIONS,
        max_video_bytes=MAX_VIDEO_BYTES,
        max_prompt_chars=MAX_PROMPT_CHARS,
        limits="one reference image; only the first 5 s of the input are edited (output at most 5 s); results kept 14 days",
        price="per generation, in the provider's credits (see its pricing page); no cost is reported back",
    )

    def check(self, sidecar: Sidecar, model: str, video: VideoInfo | None) -> None:
        self.check_declared(sidecar, model, video, managed=MANAGED_FIELDS)

    def request_body(self, request: SubmitRequest) -> dict[str, Any]:
        sidecar = request.sidecar
        body: dict[str, Any] = {"prompt": sidecar.prompt, "videoUrl": request.video_url, "callBackUrl": request.callback_url}
        if sidecar.aspect_ratio is not None:
            body["aspectRatio"] = sidecar.aspect_ratio
        if sidecar.seed is not None:
            body["seed"] = sidecar.seed
        if request.reference_image_urls:
            body["referenceImage"] = request.reference_image_urls[0]
        if sidecar.watermark is not None:
            body["waterMark"] = sidecar.watermark
        return merge_provider_options(body, sidecar.provider_options, MANAGED_FIELDS)

    def submit(self, request: SubmitRequest) -> str:
        status, body = self._send("POST", "/api/v1/aleph/generate", json=self.request_body(request), headers=self._auth())
        if status == 200 and isinstance(body, dict) and body.get("code") == 200:
            data = body.get("data")
            task_id = data.get("taskId") if isinstance(data, dict) else None
            if isinstance(task_id, str) and task_id:
                return task_id
            # A success code without a task id: it may exist, we cannot tell which one.
            raise ProviderError("ambiguous", "no_task_id", f"{self.id} answered success without a taskId", status)
        raise self.submit_failure(status, body)

    def poll(self, task_id: str) -> Outcome:
        status, body = self._send("GET", "/api/v1/aleph/record-info", params={"taskId": task_id}, headers=self._auth())
        if not (status == 200 and isinstance(body, dict) and body.get("code") == 200 and isinstance(body.get("data"), dict)):
            raise self.classify_error(status, body)
        data = body["data"]
        flag = data.get("successFlag")
        error_message = data.get("errorMessage") or ""
        expired = data.get("expireFlag") == 1
        if flag == 1:
            response = data.get("response") or {}
            video = response.get("resultVideoUrl") if isinstance(response, dict) else None
            if not isinstance(video, str) or not video:
                raise ProviderError("retryable", "incomplete", f"{self.id} reports success without a result URL", status)
            cover = response.get("resultImageUrl") or None
            cover = cover if isinstance(cover, str) else None
            if expired:  # the links are dead: fresh ones from download-url, or the job gives up
                video, cover = self._fresh_or_none(video), self._fresh_or_none(cover) if cover else None
                if video is None:
                    return Outcome(
                        "failed",
                        task_id,
                        error=self.provider_failure("the result expired at the provider and could not be refreshed", code="result_unavailable"),
                    )
            return Outcome("succeeded", task_id, (video,), cover)
        if expired:
            return Outcome("failed", task_id, error=self.provider_failure("the result expired at the provider", code="result_unavailable"))
        if flag in (2, 3) or error_message:
            return Outcome("failed", task_id, error=self.provider_failure(str(error_message or f"task failed (successFlag {flag})")))
        return Outcome("running", task_id)

    def refresh_result_url(self, url: str, *, task_id: str | None = None, index: int = 0) -> str | None:
        """``POST /api/v1/common/download-url {"url"}``: a fresh link (valid 20 minutes) for one of
        kie's own result links; kie refuses others (422), and then there is none (None)."""
        try:
            status, body = self._send("POST", DOWNLOAD_URL_PATH, json={"url": url}, headers=self._auth())
        except ProviderError as exc:
            raise TransientError(f"{self.id}'s download-url could not be asked: {exc.message}") from exc
        if status == 200 and isinstance(body, dict) and body.get("code") == 200:
            fresh = body.get("data")
            return fresh if isinstance(fresh, str) and fresh else None
        error = self.classify_error(status, body)
        if error.kind == "refused":
            return None
        raise TransientError(f"{self.id}'s download-url failed for now: {error.message}")

    def _fresh_or_none(self, url: str) -> str | None:
        """For a poll: a refresh that fails for now is a poll that failed for now."""
        try:
            return self.refresh_result_url(url)
        except TransientError as exc:
            raise ProviderError("retryable", "download_url", str(exc)) from exc

    def parse_callback(self, body: bytes, headers: Mapping[str, str]) -> Outcome:
        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or a number past int()'s digit limit
            raise CallbackInvalid("the callback body is not JSON") from exc
        if not isinstance(document, dict) or not isinstance(document.get("code"), int) or isinstance(document.get("code"), bool):
            raise CallbackInvalid("the callback has no integer `code`")
        code: int = document["code"]
        data = document.get("data")
        if data is not None and not isinstance(data, dict):
            raise CallbackInvalid("the callback's `data` is not an object")
        data = data or {}
        # Shape A carries `taskId` at the top; shape B carries `data.task_id`.
        task_id = document.get("taskId") or data.get("task_id")
        if task_id is not None and not isinstance(task_id, str):
            raise CallbackInvalid("the callback's task id is not a string")
        self._verify_signature(task_id, headers)
        message = document.get("msg")
        message = message if isinstance(message, str) and message else f"provider error code {code}"
        if code != 200:
            return Outcome("failed", task_id, error=self.provider_failure(message, retryable=code in RETRYABLE_CODES))
        video = data.get("result_video_url") or data.get("video_url")
        cover = data.get("result_image_url") or data.get("image_url")
        if not isinstance(video, str) or not video:
            raise CallbackInvalid("a success callback without a video URL")
        return Outcome("succeeded", task_id, (video,), cover if isinstance(cover, str) and cover else None)

    def _verify_signature(self, task_id: str | None, headers: Mapping[str, str]) -> None:
        """kie.ai signs callbacks when the account has a webhookHmacKey: base64(HMAC-SHA256(key,
        taskId + "." + timestamp)) in X-Webhook-Signature. The signature does not cover the body,
        so it proves the sender and the task, not the result: finalize still confirms by polling."""
        key = self.webhook_key()
        if not key:
            return
        lowered = {name.lower(): value for name, value in headers.items()}
        timestamp = lowered.get("x-webhook-timestamp", "")
        signature = lowered.get("x-webhook-signature", "").strip()
        # ASCII digits only: "²" passes str.isdigit() but not int(); base64 is ASCII.
        if not task_id or not SIGNED_TIMESTAMP.fullmatch(timestamp) or not signature or not signature.isascii():
            raise CallbackUnauthorized("the callback is not signed")
        if abs(time.time() - int(timestamp)) > SIGNATURE_MAX_AGE_SECONDS:
            raise CallbackUnauthorized("the callback's signature is too old or from the future")
        try:
            signed = f"{task_id}.{timestamp}".encode()
        except UnicodeEncodeError as exc:  # a lone surrogate (\ud800 in the JSON) was never signed
            raise CallbackUnauthorized("the callback's task id cannot have been signed") from exc
        digest = hmac.new(key.encode(), signed, hashlib.sha256).digest()
        if not hmac.compare_digest(base64.b64encode(digest).decode(), signature):
            raise CallbackUnauthorized("the callback's signature does not match")

    def classify_error(self, status: int | None, body: Any) -> ProviderError:
        code = body.get("code") if isinstance(body, dict) else None
        message = body.get("msg") if isinstance(body, dict) else None
        effective = code if isinstance(code, int) and not isinstance(code, bool) and code != 200 else status
        text = message if isinstance(message, str) and message else f"HTTP {status}"
        not_you = effective in NOT_YOU_CODES
        if effective in RETRYABLE_CODES or (isinstance(effective, int) and effective >= 500):
            return ProviderError("retryable", str(effective), f"{self.id}: {text}", status, not_you=not_you)
        if effective == 200 or effective is None:
            # HTTP 200 without a readable body: the request may have been taken.
            return ProviderError("ambiguous", "unreadable", f"{self.id} gave an unreadable answer ({text})", status)
        return ProviderError("refused", str(effective), f"{self.id}: {text}", status, not_you=not_you)

    key_check: ClassVar[str] = "GET /api/v1/chat/credit (the account's credits)"

    def _key_check_status(self) -> int:
        status, body = self._send("GET", "/api/v1/chat/credit", headers=self._auth())
        return _answered(status, body)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key()}"}


def _answered(status: int, body: Any) -> int:
    """The body's own ``code`` when the provider answers HTTP 200 with one, else the HTTP status."""
    code = body.get("code") if isinstance(body, dict) else None
    return int(code) if isinstance(code, int) and not isinstance(code, bool) else status
