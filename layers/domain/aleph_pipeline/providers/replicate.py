"""The Replicate protocol for ``runwayml/gen4-aleph``.

Create ``POST /v1/models/runwayml/gen4-aleph/predictions`` with ``Authorization: Bearer`` and
``{"input": {...}, "webhook": <callback URL>, "webhook_events_filter": ["completed"]}`` (answered
201 with the prediction object); poll ``GET /v1/predictions/{id}`` (``status`` starting |
processing | succeeded | failed | canceled; ``output`` a URL or a list of URLs; ``error`` text).
Errors are problem documents ``{"title", "detail", "status"}``.

Webhooks carry the prediction object and are signed the Standard Webhooks way: headers
``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` (space-separated ``v1,<base64>``),
HMAC-SHA256 over ``<id>.<timestamp>.<raw body>`` with the base64-decoded part after ``whsec_`` of
the account's secret (``GET /v1/webhooks/default/secret``, fetched with our key and cached). The
signature covers the body, so a verified webhook's result is Replicate's own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import STAGE_INTAKE, JobError
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

MODEL = "runwayml/gen4-aleph"
PREDICTIONS_PATH = f"/v1/models/{MODEL}/predictions"
PREDICTION_PATH = "/v1/predictions/{id}"
WEBHOOK_KEY_PATH = "/v1/webhooks/default/secret"

MAX_VIDEO_BYTES = 16 * 2**20  # "under 16MB" on the model page
MAX_PROMPT_CHARS = 1000  # Runway's limit for Aleph (Replicate forwards to Runway)
VIDEO_EXTENSIONS = ("mp4", "mov", "webm", "m4v")
SUPPORTED_FIELDS = COMMON_FIELDS | {"aspectRatio", "seed", "referenceImages"}
# The model's `input` fields: providerOptions may set these and nothing else (Replicate refuses
# any other with a 422), and never the two the pipeline sets.
INPUT_FIELDS = frozenset({"prompt", "video", "aspect_ratio", "seed", "reference_image"})
MANAGED_FIELDS = frozenset({"prompt", "video"})

# Standard Webhooks: a delivery older or newer than this is refused (a captured one cannot be replayed later).
SIGNATURE_TOLERANCE_SECONDS = 300
KEY_PREFIX = "whsec_"
SIGNED_TIMESTAMP = re.compile(r"[0-9]{1,12}", re.ASCII)
# A signature that matches no cached secret refetches it (it may have been rotated), at most this often.
SECRET_REFETCH_INTERVAL_SECONDS = 60.0
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})

RUNNING = ("starting", "processing")
FAILED = ("failed", "canceled")


@dataclass
class ReplicateProtocol(Provider):
    # About $0.90 a run (a third-party cost table, not confirmed): ProviderPrices replaces it.
    default_prices: ClassVar[Mapping[str, Mapping[str, float]]] = {"*": {"perJob": 0.90}}
    docs: ClassVar[ProviderDocs | None] = ProviderDocs(
        fields=frozenset(SUPPORTED_FIELDS) - COMMON_FIELDS,
        video_formats=VIDEO_EXTENSIONS,
        max_video_bytes=MAX_VIDEO_BYTES,
        max_prompt_chars=MAX_PROMPT_CHARS,
        limits="one reference image; only the first 5 s of the input are edited (output at most 5 s); webhooks verified by their Standard Webhooks signature",
        price="per run, billed by Replicate (about $0.90 a run, unconfirmed); no cost is reported back",
    )

    # The account's webhook signing key (decoded) and when it was fetched; guarded by the lock
    # because one adapter serves every request of a process.
    _signing_key: bytes | None = field(default=None, init=False, repr=False)
    _signing_key_at: float = field(default=0.0, init=False, repr=False)
    _signing_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def check(self, sidecar: Sidecar, model: str, video: VideoInfo | None) -> None:
        self.check_declared(sidecar, model, video, managed=MANAGED_FIELDS)
        unknown = sorted(set(sidecar.provider_options or {}) - INPUT_FIELDS)
        if unknown:
            names = ", ".join(f"`{name}`" for name in unknown)
            raise JobError(
                "unsupported_option",
                f"providerOptions {names} are not inputs of `{model}` on provider `{self.id}` (its inputs: {', '.join(sorted(INPUT_FIELDS))})",
                STAGE_INTAKE,
            )

    def request_body(self, request: SubmitRequest) -> dict[str, Any]:
        sidecar = request.sidecar
        given: dict[str, Any] = {
            "prompt": sidecar.prompt,
            "video": request.video_url,
            "aspect_ratio": sidecar.aspect_ratio,
            "seed": sidecar.seed,
            "reference_image": request.reference_image_urls[0] if request.reference_image_urls else None,
        }
        model_input = merge_provider_options({name: value for name, value in given.items() if value is not None}, sidecar.provider_options, MANAGED_FIELDS)
        return {"input": model_input, "webhook": request.callback_url, "webhook_events_filter": ["completed"]}

    def submit(self, request: SubmitRequest) -> str:
        status, body = self._send("POST", PREDICTIONS_PATH, json=self.request_body(request), headers=self._auth())
        if status in (200, 201) and isinstance(body, dict):
            prediction_id = body.get("id")
            if isinstance(prediction_id, str) and prediction_id:
                return prediction_id
            # Created without an id we can read: a prediction may exist, we cannot tell which one.
            raise ProviderError("ambiguous", "no_prediction_id", f"{self.id} answered {status} without a prediction id", status)
        raise self.submit_failure(status, body)

    def poll(self, task_id: str) -> Outcome:
        status, body = self._send("GET", PREDICTION_PATH.format(id=task_id), headers=self._auth())
        if status != 200 or not isinstance(body, dict):
            raise self.classify_error(status, body)
        try:
            return self._outcome(body, task_id)
        except CallbackInvalid as exc:
            raise ProviderError("retryable", "incomplete", f"{self.id}: {exc}", status) from exc

    def parse_callback(self, body: bytes, headers: Mapping[str, str]) -> Outcome:
        # The signature first: nothing in an unverified body is read.
        self.verify_signature(body, headers)
        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or a number past int()'s digit limit
            raise CallbackInvalid("the webhook body is not JSON") from exc
        if not isinstance(document, dict):
            raise CallbackInvalid("the webhook body is not a prediction object")
        return self._outcome(document, None)

    def classify_error(self, status: int | None, body: Any) -> ProviderError:
        text = _problem_text(body) or f"HTTP {status}"
        if status is None or status >= 500 or status in RETRYABLE_STATUSES:
            return ProviderError("retryable", str(status), f"{self.id}: {text}", status)
        if 200 <= status < 300:
            # A success status without a readable body: the request may have been taken.
            return ProviderError("ambiguous", "unreadable", f"{self.id} gave an unreadable answer ({text})", status)
        # 402 insufficient credit: not now, and not this provider (a chain moves on).
        return ProviderError("refused", str(status), f"{self.id}: {text}", status, not_you=status == 402)

    # ---- webhook signatures -----------------------------------------------------------------------

    def verify_signature(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Raise ``CallbackUnauthorized`` unless one of the webhook's signatures is the account
        secret's HMAC of ``<id>.<timestamp>.<body>`` and the timestamp is within the tolerance."""
        lowered = {name.lower(): value for name, value in headers.items()}
        message_id = lowered.get("webhook-id", "")
        timestamp = lowered.get("webhook-timestamp", "")
        signatures = lowered.get("webhook-signature", "")
        if not message_id or not timestamp or not signatures:
            raise CallbackUnauthorized("the webhook is not signed (webhook-id, webhook-timestamp and webhook-signature are required)")
        # ASCII digits only: "²" passes str.isdigit() but not int().
        if not SIGNED_TIMESTAMP.fullmatch(timestamp):
            raise CallbackUnauthorized("the webhook's timestamp is not a Unix time")
        if abs(time.time() - int(timestamp)) > SIGNATURE_TOLERANCE_SECONDS:
            raise CallbackUnauthorized("the webhook's timestamp is too old or in the future")
        given = [_b64decode(value) for version, _, value in (entry.partition(",") for entry in signatures.split(" ")) if version == "v1"]
        candidates = [digest for digest in given if digest is not None]
        if not candidates:
            raise CallbackUnauthorized("the webhook carries no v1 signature")
        try:
            signed = f"{message_id}.{timestamp}.".encode() + body
        except UnicodeEncodeError as exc:  # a header with a lone surrogate was never signed
            raise CallbackUnauthorized("the webhook's id cannot have been signed") from exc
        key, fetched_at = self._webhook_signing_key(refresh=False)
        if _any_matches(key, signed, candidates):
            return
        # Perhaps rotated since it was cached: fetched again, but not for every forged webhook.
        if time.monotonic() - fetched_at >= SECRET_REFETCH_INTERVAL_SECONDS:
            key, _ = self._webhook_signing_key(refresh=True)
            if _any_matches(key, signed, candidates):
                return
        raise CallbackUnauthorized("the webhook's signature does not match")

    def _webhook_signing_key(self, *, refresh: bool) -> tuple[bytes, float]:
        """The decoded signing key and when it was fetched (monotonic); fetched on first use and on ``refresh``."""
        with self._signing_lock:
            if self._signing_key is None or refresh:
                self._signing_key = self._fetch_signing_key()
                self._signing_key_at = time.monotonic()
            return self._signing_key, self._signing_key_at

    def _fetch_signing_key(self) -> bytes:
        status, body = self._send("GET", WEBHOOK_KEY_PATH, headers=self._auth())
        if status != 200 or not isinstance(body, dict):
            error = self.classify_error(status, body)
            # Not the sender's fault: the webhook is answered 5xx (Replicate retries it) and the poll still confirms.
            raise ProviderError(error.kind, error.code, f"the webhook signing secret could not be fetched: {error.message}", status)
        secret = body.get("key")
        key = _b64decode(secret[len(KEY_PREFIX) :]) if isinstance(secret, str) and secret.startswith(KEY_PREFIX) else None
        if not key:
            raise ProviderError("refused", "bad_secret", f"{self.id}'s webhook secret is not a {KEY_PREFIX}<base64> key", status)
        return key

    # ---- helpers ----------------------------------------------------------------------------------

    def _outcome(self, prediction: Mapping[str, Any], expected_id: str | None) -> Outcome:
        """Read a prediction object (a poll's answer, or a webhook's body)."""
        prediction_id = prediction.get("id", expected_id)
        if prediction_id is not None and not isinstance(prediction_id, str):
            raise CallbackInvalid("the prediction id is not a string")
        status = prediction.get("status")
        if status in RUNNING:
            return Outcome("running", prediction_id)
        if status == "succeeded":
            output = prediction.get("output")
            urls = [output] if isinstance(output, str) else output
            if not isinstance(urls, list) or not urls or not all(isinstance(url, str) and url for url in urls):
                raise CallbackInvalid("a succeeded prediction without an `output` URL")
            return Outcome("succeeded", prediction_id, tuple(urls))
        if status in FAILED:
            error = prediction.get("error")
            reason = error.strip() if isinstance(error, str) else ""
            if status == "canceled":
                reason = f"the prediction was canceled at {self.id}" + (f": {reason}" if reason else "")
            return Outcome("failed", prediction_id, error=self.provider_failure(reason or f"the prediction failed at {self.id}"))
        raise CallbackInvalid(f"unknown prediction status {status!r}; expected starting, processing, succeeded, failed or canceled")

    key_check: ClassVar[str] = "GET /v1/account"

    def _key_check_status(self) -> int:
        status, _ = self._send("GET", "/v1/account", headers=self._auth())
        return status

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key()}"}


def _b64decode(value: str) -> bytes | None:
    """Standard base64 (with padding), or None when it is not."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _any_matches(key: bytes, signed: bytes, candidates: list[bytes]) -> bool:
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    # Every candidate is compared (in constant time each): the answer does not tell which one failed.
    return any([hmac.compare_digest(expected, candidate) for candidate in candidates])  # noqa: C419


def _problem_text(body: Any) -> str:
    """A problem document's ``detail`` (or ``title``)."""
    if not isinstance(body, dict):
        return ""
    for name in ("detail", "title"):
        value = body.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""
