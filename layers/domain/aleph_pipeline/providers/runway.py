"""Runway's own API for Aleph (``aleph2``): the upstream every other provider resells.

Every request carries ``Authorization: Bearer <key>`` and ``X-Runway-Version: 2024-11-06``.
Inputs go through Runway's upload API, because an S3 presigned GET URL fails the HEAD check
Runway makes of URL inputs: ``POST /v1/uploads {filename, type: "ephemeral"}`` answers
``{uploadUrl, fields, runwayUri}``; the file is then POSTed to ``uploadUrl`` as
``multipart/form-data`` (the ``fields`` first, the file last, as the official SDK does), streamed
from S3 chunk by chunk. The edit is ``POST /v1/video_to_video {model: "aleph2", videoUri:
"runway://...", promptText, keyframes, seed, ratio, contentModeration}`` answered ``{id}``.

Runway sends **no webhooks**: ``GET /v1/tasks/{id}`` says ``PENDING``, ``THROTTLED`` (queued
over the account's concurrency), ``RUNNING``, ``SUCCEEDED`` (``output[]``: URLs that expire in
24-48 h; each fetch of the task gives fresh ones), ``FAILED`` (``failure``, ``failureCode``) or
``CANCELLED`` (terminal: never waited on). Errors are ``{"error": "...", "issues": [...]}``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote, urlsplit

import httpx

from ..errors import STAGE_INTAKE, STAGE_PROVIDER, JobError, TransientError
from .base import (
    CallbackInvalid,
    Outcome,
    Provider,
    ProviderDocs,
    ProviderError,
    SubmitRequest,
    VideoInfo,
    merge_provider_options,
)

if TYPE_CHECKING:  # types only: the sidecar model is built where a sidecar is read, not on every cold path
    from ..sidecar import FrameImage, Sidecar

API_VERSION = "2024-11-06"
UPLOADS_PATH = "/v1/uploads"
CREATE_PATH = "/v1/video_to_video"
TASKS_PATH = "/v1/tasks/"
MODEL = "aleph2"

MAX_PROMPT_CHARS = 1000  # counted in UTF-16 code units, as Runway counts them
MAX_KEYFRAMES = 5
MAX_VIDEO_SECONDS = 30.0
MAX_UPLOAD_BYTES = 200 * 2**20  # the upload API's limit
VIDEO_EXTENSIONS = ("mp4", "mov", "webm", "m4v")
# aleph2's `ratio` is an output resolution; the sidecar's shapes map to Runway's Aleph sizes.
RATIOS = {"16:9": "1280:720", "9:16": "720:1280", "4:3": "1104:832", "3:4": "832:1104", "1:1": "960:960", "21:9": "1584:672"}

SIDECAR_FIELDS = frozenset({"frameImages", "seed", "aspectRatio", "publicFigureThreshold"})
# Request fields the pipeline sets: providerOptions may add others (`targetAspectRatio`), never these.
MANAGED_FIELDS = frozenset({"model", "videoUri", "promptText", "keyframes", "seed", "ratio", "contentModeration"})

RUNNING_STATES = frozenset({"PENDING", "THROTTLED", "RUNNING"})
RETRYABLE_STATUSES = frozenset({408, 429})
UPLOAD_CHUNK = 1024 * 1024


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def keyframe_position(entry: str | FrameImage) -> dict[str, Any]:
    """A frame image's place in the video as a keyframe: ``seconds`` for a timestamp, ``at``
    first/last for a frame. A bare image has no place: Runway cannot take it."""
    if not isinstance(entry, str):
        if entry.timestamp is not None:
            return {"seconds": entry.timestamp}
        if entry.frame in ("first", 0):
            return {"at": "first"}
        if entry.frame in ("last", -1):
            return {"at": "last"}
    raise JobError(
        "invalid_sidecar",
        "field `frameImages`: model `aleph2` pins each image to a place in the video; give each entry a `timestamp` or a `frame` (first/last)",
        STAGE_INTAKE,
    )


def failure_error(provider_id: str, code: Any, failure: Any) -> JobError:
    """A FAILED task's error, classified by ``failureCode`` as Runway documents it: ``SAFETY.INPUT.*``
    is final (the input itself is refused), ``SAFETY.OUTPUT.*`` may pass with another prompt,
    ``INTERNAL*`` is worth trying again, ``ASSET.INVALID`` needs a fixed input."""
    code_text = code if isinstance(code, str) and code else None
    reason = failure if isinstance(failure, str) and failure else "the task failed"
    if code_text is None:
        advice, retryable = "", False
    elif code_text.startswith("SAFETY.INPUT"):
        advice, retryable = "the input was refused by moderation; retrying cannot help", False
    elif code_text.startswith("SAFETY.OUTPUT"):
        advice, retryable = "the result was refused by moderation; another prompt may pass", False
    elif code_text.startswith("INTERNAL"):
        advice, retryable = "an error on Runway's side; trying again may work", True
    elif code_text.startswith("ASSET.INVALID"):
        advice, retryable = "an input file is not usable; fix the video or images", False
    else:
        advice, retryable = "", False
    text = f"{provider_id}: {reason}" + (f" ({code_text}{': ' + advice if advice else ''})" if code_text else "")
    return JobError("generation_failed", text, STAGE_PROVIDER, retryable=retryable, details={"providerCode": code_text} if code_text else {})


@dataclass
class RunwayProtocol(Provider):
    # $0.01 a credit; aleph2's credits per second are not published: ProviderPrices' `creditsPerSecond`.
    default_prices: ClassVar[Mapping[str, Mapping[str, float]]] = {"*": {"creditUsd": 0.01}}
    webhooks: ClassVar[bool] = False
    docs: ClassVar[ProviderDocs | None] = ProviderDocs(
        fields=SIDECAR_FIELDS,
        video_formats=VIDEO_EXTENSIONS,
        max_video_bytes=MAX_UPLOAD_BYTES,
        max_prompt_chars=MAX_PROMPT_CHARS,
        limits=(
            "model `aleph2`: input up to 30 s, sent through Runway's upload API; `frameImages` (at most 5, each with a "
            "`timestamp` or `frame` first/last) become keyframes; no webhooks: completion is polled"
        ),
        price="in Runway credits ($0.01 each); aleph2's rate is not in Runway's published documents",
    )

    # ---- before any money is spent -------------------------------------------------------------

    def check(self, sidecar: Sidecar, model: str, video: VideoInfo | None) -> None:
        self.check_declared(sidecar, model, video, managed=MANAGED_FIELDS)
        if utf16_length(sidecar.prompt) > MAX_PROMPT_CHARS:
            raise JobError(
                "invalid_sidecar",
                f"the prompt is {utf16_length(sidecar.prompt)} UTF-16 units long; model `{model}` takes at most {MAX_PROMPT_CHARS}",
                STAGE_INTAKE,
            )
        frames = sidecar.frame_images or []
        if len(frames) > MAX_KEYFRAMES:
            raise JobError(
                "unsupported_option", f"field `frameImages` has {len(frames)} images; model `{model}` takes at most {MAX_KEYFRAMES} keyframes", STAGE_INTAKE
            )
        for entry in frames:
            keyframe_position(entry)
        seconds = video.duration if video is not None else None
        if seconds is None:
            return  # not known yet, or a video given by URL: Runway checks it
        if seconds > MAX_VIDEO_SECONDS:
            raise JobError(
                "video_duration", f"the video is {seconds:.2f} s long; model `{model}` edits videos of at most {MAX_VIDEO_SECONDS:g} seconds", STAGE_INTAKE
            )
        for entry in frames:
            if not isinstance(entry, str) and entry.timestamp is not None and entry.timestamp > seconds:
                raise JobError(
                    "invalid_sidecar",
                    f"field `frameImages`: timestamp {entry.timestamp:g} s is past the end of the {seconds:.2f}-second video",
                    STAGE_INTAKE,
                )

    # ---- the request ---------------------------------------------------------------------------

    def request_body(self, request: SubmitRequest, video_uri: str, keyframe_uris: tuple[str, ...]) -> dict[str, Any]:
        """The ``video_to_video`` body, given the ``runway://`` URIs of the uploaded inputs."""
        sidecar = request.sidecar
        body: dict[str, Any] = {"model": request.model, "videoUri": video_uri, "promptText": sidecar.prompt}
        if sidecar.frame_images:
            body["keyframes"] = [{**keyframe_position(entry), "uri": uri} for entry, uri in zip(sidecar.frame_images, keyframe_uris, strict=True)]
        if sidecar.seed is not None:
            body["seed"] = sidecar.seed
        if sidecar.aspect_ratio is not None:
            body["ratio"] = RATIOS[sidecar.aspect_ratio]
        if sidecar.public_figure_threshold is not None:
            body["contentModeration"] = {"publicFigureThreshold": sidecar.public_figure_threshold}
        return merge_provider_options(body, sidecar.provider_options, MANAGED_FIELDS)

    def submit(self, request: SubmitRequest) -> str:
        # Uploads create no task: any failure before the video_to_video POST is safe to retry.
        video_uri = self.upload(request.video_url, "video")
        keyframe_uris = tuple(self.upload(url, f"keyframe-{index}") for index, url in enumerate(request.frame_image_urls, start=1))
        status, answer = self._send("POST", CREATE_PATH, json=self.request_body(request, video_uri, keyframe_uris), headers=self._headers())
        task_id = answer.get("id") if isinstance(answer, dict) else None
        if status == 200 and isinstance(task_id, str) and task_id:
            return task_id
        if status == 200:
            raise ProviderError("ambiguous", "no_task_id", f"{self.id} answered success without a task id", status)
        raise self.submit_failure(status, answer)

    def upload(self, source_url: str, name: str) -> str:
        """Copy one input from its (presigned) URL into Runway's upload API; its ``runway://`` URI.

        The file is streamed: S3's answer is read chunk by chunk into the multipart body, so memory
        does not grow with the video. S3's Content-Length gives the body's exact length (presigned
        POST targets refuse chunked bodies)."""
        try:
            with self.http.stream("GET", source_url) as source:
                if source.status_code != 200:
                    raise ProviderError("retryable", "input_unreadable", f"the {name} could not be read for the upload (HTTP {source.status_code})")
                filename = _filename(source_url, name)
                ticket = self._upload_ticket(filename)
                content_type = source.headers.get("Content-Type") or "application/octet-stream"
                length = source.headers.get("Content-Length")
                body = MultipartStream(ticket["fields"], filename, content_type, source.iter_raw(UPLOAD_CHUNK))
                headers = {"Content-Type": body.content_type}
                if length is not None and length.isdigit():
                    headers["Content-Length"] = str(body.length(int(length)))
                answer = self.http.post(ticket["uploadUrl"], content=body, headers=headers)
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise ProviderError("retryable", "upload_failed", f"uploading the {name} to {self.id} failed: {type(exc).__name__}") from exc
        if not 200 <= answer.status_code < 300:
            raise ProviderError(
                "retryable" if answer.status_code >= 500 else "refused",
                str(answer.status_code),
                f"{self.id} refused the {name}'s upload (HTTP {answer.status_code})",
                answer.status_code,
            )
        return str(ticket["runwayUri"])

    def _upload_ticket(self, filename: str) -> dict[str, Any]:
        status, answer = self._send("POST", UPLOADS_PATH, json={"filename": filename, "type": "ephemeral"}, headers=self._headers())
        if status == 200 and isinstance(answer, dict):
            url, fields, uri = answer.get("uploadUrl"), answer.get("fields"), answer.get("runwayUri")
            if isinstance(url, str) and url and isinstance(fields, dict) and isinstance(uri, str) and uri.startswith("runway://"):
                return {"uploadUrl": url, "fields": {str(key): str(value) for key, value in fields.items()}, "runwayUri": uri}
            raise ProviderError("retryable", "unreadable", f"{self.id} answered the upload request without uploadUrl, fields and runwayUri", status)
        error = self.classify_error(status, answer)
        if error.kind == "ambiguous":  # no task comes of an upload: a repeat costs nothing
            error = ProviderError("retryable", error.code, error.message, status)
        raise error

    # ---- answers -------------------------------------------------------------------------------

    def refresh_result_url(self, url: str, *, task_id: str | None = None, index: int = 0) -> str | None:
        """Runway's output links expire in 24-48 h; every fetch of the task gives fresh ones."""
        if not task_id:
            return None
        try:
            outcome = self.poll(task_id)
        except ProviderError as exc:
            if exc.kind == "refused":
                return None
            raise TransientError(f"{self.id}'s task could not be fetched again for a fresh link: {exc.message}") from exc
        return outcome.video_urls[index] if outcome.state == "succeeded" and index < len(outcome.video_urls) else None

    def poll(self, task_id: str) -> Outcome:
        status, answer = self._send("GET", TASKS_PATH + task_id, headers=self._headers())
        if status != 200 or not isinstance(answer, dict):
            raise self.classify_error(status, answer)
        state = answer.get("status")
        if state in RUNNING_STATES:
            return Outcome("running", task_id, throttled=state == "THROTTLED")
        if state == "SUCCEEDED":
            output = answer.get("output")
            if not isinstance(output, list) or not output or not all(isinstance(url, str) and url for url in output):
                raise ProviderError("retryable", "incomplete", f"{self.id} reports the task SUCCEEDED without `output` URLs", status)
            return Outcome("succeeded", task_id, tuple(output))
        if state == "FAILED":
            return Outcome("failed", task_id, error=failure_error(self.id, answer.get("failureCode"), answer.get("failure")))
        if state == "CANCELLED":
            # Terminal: Runway will never finish it (its SDK waits on it until a timeout; we do not).
            error = JobError("generation_failed", f"{self.id}: the task was cancelled", STAGE_PROVIDER, details={"providerCode": "CANCELLED"})
            return Outcome("failed", task_id, error=error)
        raise ProviderError("retryable", "unknown_status", f"{self.id} reports an unknown task status {str(state)[:40]!r}", status)

    def parse_callback(self, body: bytes, headers: Mapping[str, str]) -> Outcome:
        raise CallbackInvalid(f"provider `{self.id}` sends no callbacks; its jobs complete by polling")

    def classify_error(self, status: int | None, body: Any) -> ProviderError:
        text = f"{self.id}: {_message(body) or f'HTTP {status}'}"
        if status == 200:
            return ProviderError("ambiguous", "unreadable", f"{self.id} gave an unreadable answer (HTTP 200)", status)
        if status is None or status in RETRYABLE_STATUSES or status >= 500:
            return ProviderError("retryable", str(status), text, status)
        return ProviderError("refused", str(status), text, status)

    key_check: ClassVar[str] = "GET /v1/organization (the account's credits and limits)"

    def _key_check_status(self) -> int:
        status, _ = self._send("GET", "/v1/organization", headers=self._headers())
        return status

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key()}", "X-Runway-Version": API_VERSION}


class MultipartStream:
    """A ``multipart/form-data`` body of text fields and one file part (last), its file read from
    an iterator of chunks: the body is produced as it is sent, never held whole."""

    def __init__(self, fields: Mapping[str, str], filename: str, content_type: str, chunks: Iterator[bytes]) -> None:
        self.boundary = uuid.uuid4().hex
        self._chunks = chunks
        parts = [f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"\r\n\r\n{value}\r\n' for name, value in fields.items()]
        parts.append(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; filename="{_quoted(filename)}"\r\nContent-Type: {content_type}\r\n\r\n'
        )
        self._head = "".join(parts).encode("utf-8")
        self._tail = f"\r\n--{self.boundary}--\r\n".encode("ascii")

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def length(self, file_size: int) -> int:
        return len(self._head) + file_size + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self._head
        yield from self._chunks
        yield self._tail


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _filename(url: str, fallback: str) -> str:
    """The input's file name from its URL's path (Runway reads the type from it)."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return name if name and "." in name else fallback


def _message(body: Any) -> str:
    """Runway's ``error``, with its validation ``issues`` appended when there are any."""
    if not isinstance(body, dict):
        return ""
    error = body.get("error")
    text = error if isinstance(error, str) else ""
    issues = body.get("issues")
    if isinstance(issues, list) and issues:
        details = "; ".join(str(issue.get("message", issue)) if isinstance(issue, dict) else str(issue) for issue in issues[:10])
        text = f"{text}: {details}" if text else details
    return text
