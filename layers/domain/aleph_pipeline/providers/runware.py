"""The Runware protocol for Runway Aleph 1 (``runway:2@1``) and Aleph 2.0 (``runway:aleph@2.0``).

``POST /v1`` with a JSON *array* of tasks and ``Authorization: Bearer <key>``. An edit is an
async ``videoInference`` task with our own ``taskUUID``, a ``webhookURL`` (our callback API) and
``includeCost``; Runware answers a 200 without ``errors`` when it took the task. Results come as
one webhook per result, ``{"data": [{taskUUID, videoUUID, videoURL, seed, cost}]}``; polling is a
``getResponse`` task whose items say ``processing``, ``success`` or ``error``. Failures come as
``{"errors": [{code, message, parameter, taskType, taskUUID}]}``, classified as Runware's own SDK
does (see ``classify_code``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import STAGE_INTAKE, JobError
from .base import (
    COMMON_FIELDS,
    CallbackInvalid,
    Outcome,
    Provider,
    ProviderDocs,
    ProviderError,
    ResultItem,
    SubmitRequest,
    VideoInfo,
    cost_from_rule,
    merge_provider_options,
    unsupported,
)

if TYPE_CHECKING:  # types only: the sidecar model is built where a sidecar is read, not on every cold path
    from ..sidecar import FrameImage, Sidecar

ALEPH_1 = "runway:2@1"
ALEPH_2 = "runway:aleph@2.0"
MODELS = (ALEPH_2, ALEPH_1)  # the first is the default

MAX_PROMPT_CHARS = 1000
ALEPH_2_SECONDS = (2.0, 30.0)
MIN_TTL_SECONDS = 60
VIDEO_EXTENSIONS = ("mp4", "mov", "m4v", "webm", "avi")

# Aleph 1's output sizes; `aspectRatio` picks the first of its shape.
ALEPH_1_SIZES = ((1280, 720), (720, 1280), (1104, 832), (832, 1104), (960, 960), (1584, 672), (848, 480), (640, 480))
ASPECT_SIZES = {"16:9": (1280, 720), "9:16": (720, 1280), "4:3": (1104, 832), "3:4": (832, 1104), "1:1": (960, 960), "21:9": (1584, 672)}

_BOTH = frozenset({"seed", "numberResults", "outputFormat", "outputQuality", "safety", "publicFigureThreshold"})
SUPPORTED_FIELDS = {
    ALEPH_2: COMMON_FIELDS | _BOTH | {"frameImages"},
    ALEPH_1: COMMON_FIELDS | _BOTH | {"referenceImages", "width", "height", "aspectRatio"},
}
# Request fields only the pipeline sets: `providerOptions` may add fields, never these (the
# result count and format decide the outputs; results must come back to us as URLs).
MANAGED_FIELDS = frozenset(
    {
        "taskType",
        "taskUUID",
        "model",
        "positivePrompt",
        "inputs",
        "deliveryMethod",
        "webhookURL",
        "includeCost",
        "outputType",
        "uploadEndpoint",
        "numberResults",
        "outputFormat",
    }
)

# Error codes Runware's SDK retries, and the families it never retries.
TRANSIENT_CODES = frozenset({"inferenceError", "processingFailed", "timeoutProvider", "noAvailableServer"})
CONTENT_CODES = frozenset({"contentPolicyViolation", "nsfwContentDetected", "promptBlocked"})
NEVER_RETRY_WORDS = ("balance", "credit", "quota")
NEVER_RETRY_PREFIXES = ("invalid", "missing", "unsupported")
RETRYABLE_STATUSES = frozenset({408, 429})


def task_uuid(job_id: str) -> str:
    """The job's ``taskUUID``: a UUID v4 made from the job id, so it is known without Runware's answer."""
    return str(uuid.UUID(hex=job_id[:32].ljust(32, "0"), version=4))


def classify_code(code: str | None, status: int | None) -> bool:
    """Whether an error is worth retrying, as Runware's SDK decides: codes first, then HTTP status."""
    if code:
        lowered = code.lower()
        if (
            code in CONTENT_CODES
            or any(word in lowered for word in NEVER_RETRY_WORDS)
            or code.startswith(NEVER_RETRY_PREFIXES)
            or code.endswith("Expired")
            or code == "taskFailedOrNotFound"
        ):
            return False
        if code in TRANSIENT_CODES:
            return True
    return status is not None and (status in RETRYABLE_STATUSES or status >= 500)


# A cost above this (in USD, per result) is not a cost Runware reports; it is not recorded.
MAX_REPORTED_COST = 1e6


@dataclass
class RunwareProtocol(Provider):
    idempotent_submit: ClassVar[bool] = True  # the taskUUID is the job's own; a repeat is answered conflictTaskUUID
    docs: ClassVar[ProviderDocs | None] = ProviderDocs(
        fields=frozenset(SUPPORTED_FIELDS[ALEPH_1] | SUPPORTED_FIELDS[ALEPH_2]) - COMMON_FIELDS,
        video_formats=VIDEO_EXTENSIONS,
        max_video_bytes=None,
        max_prompt_chars=MAX_PROMPT_CHARS,
        limits=(
            "models `runway:aleph@2.0` (default: `frameImages`, input 2-30 s, whole clip edited) and `runway:2@1` "
            "(one reference image, `width`/`height` as a documented pair or from `aspectRatio`); `numberResults` 1-4"
        ),
        price="Aleph 2.0: $0.28 per second of video; the cost of each job is recorded in job.json",
    )

    # Runware's price list: Aleph 2.0 per second of input (Aleph 1's rate comes from ProviderPrices).
    default_prices: ClassVar[Mapping[str, Mapping[str, float]]] = {ALEPH_2: {"perSecond": 0.28}}

    # ---- before any money is spent -------------------------------------------------------------

    def estimate_cost(self, sidecar: Sidecar, model: str, video: VideoInfo) -> float | None:
        """Price x seconds x ``numberResults``; a video known only by URL is priced at the longest
        Aleph 2.0 takes (30 s), so a budget is never reserved short."""
        seconds = video.known_duration()
        if seconds is None and model == ALEPH_2:
            seconds = ALEPH_2_SECONDS[1]
        return cost_from_rule(self.price_rule(model), seconds, sidecar.number_results or 1)

    def own_reference(self, job_id: str) -> str | None:
        # Our taskUUID is derived from the job id, so a submission whose answer was lost can be polled.
        return task_uuid(job_id)

    def check(self, sidecar: Sidecar, model: str, video: VideoInfo | None) -> None:
        extra = sidecar.given_fields - SUPPORTED_FIELDS[model]
        if extra:
            raise unsupported(self.id, model, extra)
        if len(sidecar.prompt) > MAX_PROMPT_CHARS:
            raise JobError(
                "invalid_sidecar",
                f"the prompt is {len(sidecar.prompt)} characters; model `{model}` takes 1-{MAX_PROMPT_CHARS}",
                STAGE_INTAKE,
            )
        if sidecar.reference_images and len(sidecar.reference_images) != 1:
            raise JobError("unsupported_option", f"model `{model}` takes one reference image, not {len(sidecar.reference_images)}", STAGE_INTAKE)
        self._check_options(sidecar, model)
        if video is None:
            return
        if video.extension not in VIDEO_EXTENSIONS:
            raise JobError("video_unsupported", f"provider `{self.id}` takes {', '.join(VIDEO_EXTENSIONS)} videos, not .{video.extension}", STAGE_INTAKE)
        if model == ALEPH_2:
            self._check_duration(sidecar, model, video)

    def _check_duration(self, sidecar: Sidecar, model: str, video: VideoInfo) -> None:
        seconds = video.duration
        if seconds is None:
            return  # a video given by URL: Runware checks it
        low, high = ALEPH_2_SECONDS
        if not low <= seconds <= high:
            raise JobError(
                "video_duration",
                f"the video is {seconds:.2f} s long; model `{model}` edits videos of {low:g} to {high:g} seconds",
                STAGE_INTAKE,
            )
        for entry in sidecar.frame_images or ():
            if not isinstance(entry, str) and entry.timestamp is not None and entry.timestamp > seconds:
                raise JobError(
                    "invalid_sidecar",
                    f"field `frameImages`: timestamp {entry.timestamp:g} s is past the end of the {seconds:.2f}-second video",
                    STAGE_INTAKE,
                )

    @staticmethod
    def _size(sidecar: Sidecar, model: str) -> tuple[int, int] | None:
        """Aleph 1's output size: a documented width/height pair, or the one ``aspectRatio`` names."""
        width, height = sidecar.width, sidecar.height
        if (width is None) != (height is None):
            raise JobError("invalid_sidecar", "give both `width` and `height`, or neither", STAGE_INTAKE)
        if width is not None and height is not None:
            if sidecar.aspect_ratio is not None:
                raise JobError("invalid_sidecar", "give `aspectRatio` or `width`/`height`, not both", STAGE_INTAKE)
            if (width, height) not in ALEPH_1_SIZES:
                sizes = ", ".join(f"{w}x{h}" for w, h in ALEPH_1_SIZES)
                message = f"`width`/`height` {width}x{height} is not a size model `{model}` makes; use one of: {sizes}"
                raise JobError("unsupported_option", message, STAGE_INTAKE)
            return width, height
        if sidecar.aspect_ratio is not None:
            return ASPECT_SIZES[sidecar.aspect_ratio]
        return None

    @classmethod
    def _check_options(cls, sidecar: Sidecar, model: str) -> None:
        merge_provider_options({}, sidecar.provider_options, cls._managed(sidecar, model))
        ttl = (sidecar.provider_options or {}).get("ttl")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < MIN_TTL_SECONDS):
            raise JobError("invalid_sidecar", f"providerOptions `ttl` must be a whole number of seconds, at least {MIN_TTL_SECONDS}", STAGE_INTAKE)

    @classmethod
    def _managed(cls, sidecar: Sidecar, model: str) -> frozenset[str]:
        """Fields ``providerOptions`` may not set: the pipeline's own, and those the sidecar sets."""
        managed = set(MANAGED_FIELDS) | set(_modelled(sidecar))
        if cls._size(sidecar, model) is not None:
            managed |= {"width", "height"}
        if sidecar.public_figure_threshold is not None:
            managed.add("providerSettings")
        return frozenset(managed)

    # ---- the request ---------------------------------------------------------------------------

    def request_body(self, request: SubmitRequest) -> list[dict[str, Any]]:
        sidecar = request.sidecar
        inputs: dict[str, Any] = {"video": request.video_url}
        if request.reference_image_urls:
            inputs["referenceImages"] = list(request.reference_image_urls)
        if sidecar.frame_images:
            inputs["frameImages"] = [_frame_image(entry, url) for entry, url in zip(sidecar.frame_images, request.frame_image_urls, strict=True)]
        task: dict[str, Any] = {
            "taskType": "videoInference",
            "taskUUID": task_uuid(request.job_id),
            "model": request.model,
            "positivePrompt": sidecar.prompt,
            "deliveryMethod": "async",
            "outputType": "URL",
            "includeCost": True,
            "webhookURL": request.callback_url,
            "inputs": inputs,
        }
        task.update(_modelled(sidecar))
        size = self._size(sidecar, request.model)
        if size is not None:
            task["width"], task["height"] = size
        if sidecar.public_figure_threshold is not None:
            task["providerSettings"] = {"runway": {"contentModeration": {"publicFigureThreshold": sidecar.public_figure_threshold}}}
        return [merge_provider_options(task, sidecar.provider_options, self._managed(sidecar, request.model))]

    def submit(self, request: SubmitRequest) -> str:
        body = self.request_body(request)
        status, answer = self._send("POST", "/v1", json=body, headers=self._auth())
        errors = _errors(answer)
        if status == 200 and not errors:
            # Runware acknowledges with the task; any 200 without errors means it took it.
            return str(body[0]["taskUUID"])
        if errors and _already_taken(errors[0]):
            # The taskUUID is this job's own: an earlier attempt was taken after all.
            return str(body[0]["taskUUID"])
        raise self.submit_failure(status, answer)

    # ---- answers -------------------------------------------------------------------------------

    def poll(self, task_id: str) -> Outcome:
        status, answer = self._send("POST", "/v1", json=[{"taskType": "getResponse", "taskUUID": task_id}], headers=self._auth())
        errors = _errors(answer)
        if errors and errors[0].get("code") == "taskFailedOrNotFound":
            return Outcome("failed", task_id, error=self._failure(errors[0]))
        if status != 200 or errors:
            raise self.classify_error(status, answer)
        items = _items(answer)
        if items is None:
            raise ProviderError("retryable", "unreadable", f"{self.id} answered getResponse without data", status)
        return self._outcome(items, task_id)

    def parse_callback(self, body: bytes, headers: Mapping[str, str]) -> Outcome:
        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or a number past int()'s digit limit
            raise CallbackInvalid("the webhook body is not JSON") from exc
        errors = _errors(document)
        if errors:
            task_id = errors[0].get("taskUUID")
            return Outcome("failed", task_id if isinstance(task_id, str) else None, error=self._failure(errors[0]))
        items = _items(document)
        if not items:
            raise CallbackInvalid("the webhook has neither `data` items nor `errors`")
        return self._outcome(items, None)

    def _outcome(self, items: list[dict[str, Any]], task_id: str | None) -> Outcome:
        """One outcome for the items of a webhook or a getResponse answer."""
        named = [item.get("taskUUID") for item in items if item.get("taskUUID") is not None]
        if not all(isinstance(value, str) for value in named):  # checked before a set is made of them
            raise CallbackInvalid("an item's `taskUUID` is not a string")
        ids = set(named)
        if len(ids) > 1:
            raise CallbackInvalid("the items belong to different tasks")
        if ids:
            task_id = ids.pop()
        results: list[ResultItem] = []
        for item in items:
            status = item.get("status")
            if status == "error" or isinstance(item.get("error"), dict):
                error = item.get("error")
                return Outcome("failed", task_id, error=self._failure(error if isinstance(error, dict) else {}))
            if status == "processing":
                continue
            results.append(_result(item))
        if not results:
            return Outcome("running", task_id)
        return Outcome("succeeded", task_id, tuple(result.video_url for result in results), results=tuple(results))

    def _failure(self, error: Mapping[str, Any]) -> JobError:
        code = error.get("code") if isinstance(error.get("code"), str) else None
        message = error.get("message") if isinstance(error.get("message"), str) and error.get("message") else "the task failed"
        failure = self.provider_failure(f"{self.id}: {message}" + (f" ({code})" if code else ""), retryable=classify_code(code, None))
        if code:
            failure.details["providerCode"] = code
        return failure

    def classify_error(self, status: int | None, body: Any) -> ProviderError:
        errors = _errors(body)
        first = errors[0] if errors else {}
        code = first.get("code") if isinstance(first.get("code"), str) else None
        message = first.get("message") if isinstance(first.get("message"), str) and first.get("message") else f"HTTP {status}"
        text = f"{self.id}: {message}" + (f" ({code})" if code else "")
        if status == 200 and not errors:
            return ProviderError("ambiguous", "unreadable", f"{self.id} gave an unreadable answer (HTTP 200)", status)
        # Insufficient balance (402, or a balance/credit code): not now, and not this provider (a chain moves on).
        not_you = status == 402 or (code is not None and any(word in code.lower() for word in ("balance", "credit")))
        if classify_code(code, status):
            return ProviderError("retryable", code or str(status), text, status, not_you=not_you)
        return ProviderError("refused", code or str(status), text, status, not_you=not_you)

    key_check: ClassVar[str] = 'POST /v1 [{"taskType": "authentication"}]'

    def _key_check_status(self) -> int:
        status, _ = self._send("POST", "/v1", json=[{"taskType": "authentication", "apiKey": self.api_key()}])
        return status

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key()}"}


def _modelled(sidecar: Sidecar) -> dict[str, Any]:
    """The request fields that the sidecar's own options map to one to one."""
    fields: dict[str, Any] = {}
    if sidecar.seed is not None:
        fields["seed"] = sidecar.seed
    if sidecar.number_results is not None:
        fields["numberResults"] = sidecar.number_results
    if sidecar.output_format is not None:
        fields["outputFormat"] = sidecar.output_format
    if sidecar.output_quality is not None:
        fields["outputQuality"] = sidecar.output_quality
    if sidecar.safety is not None:
        fields["safety"] = sidecar.safety.to_document()
    return fields


def _frame_image(entry: str | FrameImage, url: str) -> str | dict[str, Any]:
    """The sidecar's entry with its image replaced by the URL: plain, ``frame`` or ``timestamp`` form."""
    if isinstance(entry, str):
        return url
    item: dict[str, Any] = {"image": url}
    if entry.frame is not None:
        item["frame"] = entry.frame
    if entry.timestamp is not None:
        item["timestamp"] = entry.timestamp
    return item


def _errors(document: Any) -> list[dict[str, Any]]:
    """The ``errors`` list of a Runware answer (empty when there is none)."""
    if isinstance(document, dict) and isinstance(document.get("errors"), list):
        return [error if isinstance(error, dict) else {} for error in document["errors"]]
    return []


def _already_taken(error: Mapping[str, Any]) -> bool:
    """Whether an error says a task with our ``taskUUID`` exists already: ``conflictTaskUUID``
    (Runware's SDK reads it as proof that an earlier submit landed), or a duplicate/exists code
    about the ``taskUUID`` parameter."""
    code = str(error.get("code") or "").lower()
    parameter = error.get("parameter")
    about_uuid = parameter == "taskUUID" or (parameter is None and "taskuuid" in code)
    return about_uuid and any(word in code for word in ("conflict", "duplicate", "exists"))


def _items(document: Any) -> list[dict[str, Any]] | None:
    """Task items from ``{"data": [...]}``, a bare array, or one bare item (the docs' examples)."""
    if isinstance(document, dict) and "data" in document:
        document = document["data"]
    elif isinstance(document, dict) and "taskUUID" in document:
        document = [document]
    if not isinstance(document, list) or not all(isinstance(item, dict) for item in document):
        return None
    return document


def _result(item: dict[str, Any]) -> ResultItem:
    url = item.get("videoURL")
    if not isinstance(url, str) or not url:
        raise CallbackInvalid("a result item without a `videoURL`")
    result_id = item.get("videoUUID")
    cost = item.get("cost")
    seed = item.get("seed")
    # Cost and seed are for the record only: a value no store can hold (NaN, Infinity, 60 digits)
    # is left out rather than refusing a real result. (NaN compares False.)
    if isinstance(cost, bool) or not isinstance(cost, int | float) or not 0 <= cost <= MAX_REPORTED_COST:
        cost = None
    return ResultItem(
        id=result_id if isinstance(result_id, str) and result_id else url,
        video_url=url,
        cost=None if cost is None else float(cost),
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**64 else None,
    )
