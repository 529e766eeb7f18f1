"""The one interface every provider adapter implements, and the values it trades in."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import httpx

from .. import media
from ..config import get_settings
from ..errors import STAGE_INTAKE, STAGE_PROVIDER, JobError

if TYPE_CHECKING:  # types only: the sidecar model is built where a sidecar is read, not on every cold path
    from ..sidecar import Sidecar

# Answer codes that say a submit was not taken (rate limited, down for maintenance): safe to send again.
NOT_TAKEN_CODES = frozenset({"429", "455"})
# Fields every provider takes or that never reach a provider.
COMMON_FIELDS = frozenset({"prompt", "provider", "providers", "model", "video", "metadata", "providerOptions"})


@dataclass(frozen=True)
class VideoInfo:
    """What is known about the input video before anything is spent."""

    extension: str  # lower case, no dot
    size: int | None  # bytes; None for an https URL whose size is unknown
    # Ranged reads of the video (offset, length) -> bytes; None for a video known only by URL.
    read_range: Callable[[int, int], bytes] | None = None
    # The URL the provider will fetch the video from (set at submit, for an estimate that asks the provider).
    url: str | None = None

    def check_container(self) -> None:
        """Refuse a file that is not the container its name says (a text file named ``clip.mp4``),
        before any provider is called: its first bytes, and its header's duration where it gives one."""
        if self.read_range is None or self.size is None:
            return  # known only by URL: the provider fetches and checks it
        try:
            duration = media.probe(self.extension, self.size, self.read_range)
        except media.DurationUnknown as exc:
            raise JobError("video_unsupported", f"the video is not a readable .{self.extension} file: {exc}", STAGE_INTAKE) from exc
        if duration is not None:
            self.__dict__["duration"] = duration  # the header is read once

    @cached_property
    def duration(self) -> float | None:
        """The duration from the container header (a few ranged reads, never the whole file),
        read once. None when the video is known only by URL; a provider with duration limits asks."""
        return self.duration_seconds()

    def known_duration(self) -> float | None:
        """The duration if the header gives it, else None (for an estimate: never an error)."""
        try:
            return self.duration
        except JobError:
            return None

    def with_url(self, url: str) -> VideoInfo:
        """The same video with the URL the provider will fetch it from (the duration read stays read)."""
        copy = replace(self, url=url)
        if "duration" in self.__dict__:
            copy.__dict__["duration"] = self.__dict__["duration"]
        return copy

    def duration_seconds(self) -> float | None:
        """See ``duration`` (which caches it)."""
        if self.read_range is None or self.size is None:
            return None
        try:
            return media.duration_seconds(self.extension, self.size, self.read_range)
        except media.DurationUnknown as exc:
            raise JobError("video_unsupported", f"the video's duration could not be read from its header: {exc}", STAGE_INTAKE) from exc


@dataclass(frozen=True)
class SubmitRequest:
    job_id: str
    sidecar: Sidecar
    model: str
    video_url: str
    reference_image_urls: tuple[str, ...]
    callback_url: str
    # One URL per ``sidecar.frame_images`` entry, in the same order (keys already presigned).
    frame_image_urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResultItem:
    """One result of a task. ``id`` is the provider's own id for it (Runware's ``videoUUID``):
    a repeated callback for the same result is recognised by it."""

    id: str
    video_url: str
    cover_url: str | None = None
    cost: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class Outcome:
    """What a callback or a poll says about a task."""

    state: Literal["running", "succeeded", "failed"]
    task_id: str | None = None
    video_urls: tuple[str, ...] = ()
    cover_url: str | None = None
    cost: float | None = None
    error: JobError | None = None
    # Providers that deliver results one by one (Runware) name each; see ``items``.
    results: tuple[ResultItem, ...] = ()
    throttled: bool = False  # running, but queued behind the account's concurrency (Runway's THROTTLED): poll less often

    @property
    def items(self) -> tuple[ResultItem, ...]:
        """The results this outcome carries, as items (a whole-task result is item ``1``, ``2``, ...)."""
        if self.results:
            return self.results
        return tuple(
            ResultItem(str(index), url, self.cover_url if index == 1 else None, self.cost if index == 1 else None)
            for index, url in enumerate(self.video_urls, start=1)
        )


class ProviderError(Exception):
    """A submit or poll that did not succeed.

    ``kind``: ``refused`` (the provider said no; retrying cannot help), ``retryable`` (the
    provider did not take the request: rate limit, server error, no connection) or
    ``ambiguous`` (the request may have reached the provider; resubmitting could pay twice).

    ``not_you``: the provider did not take the request and will not take it for a while, whoever
    asks again (maintenance, a feature disabled, the account out of credits): a job with a
    provider chain moves to the next provider. Never set on an ambiguous answer.
    """

    def __init__(self, kind: Literal["refused", "retryable", "ambiguous"], code: str, message: str, status: int | None = None, *, not_you: bool = False):
        super().__init__(f"{code}: {message}")
        self.kind = kind
        self.code = code
        self.message = message
        self.status = status
        self.not_you = not_you and kind != "ambiguous"

    def to_job_error(self) -> JobError:
        code = "provider_rejected" if self.kind == "refused" else "provider_unavailable"
        return JobError(code, self.message, "submit", retryable=self.kind != "refused", details={"providerCode": self.code})


@dataclass(frozen=True)
class ProviderDocs:
    """What an adapter declares about itself for the README's provider matrix (``python -m tools.gen_docs``)."""

    fields: frozenset[str]  # sidecar fields honoured besides COMMON_FIELDS
    video_formats: tuple[str, ...]
    max_video_bytes: int | None
    max_prompt_chars: int | None
    limits: str  # anything else worth knowing, one line
    price: str


class CallbackInvalid(ValueError):
    """A callback body that is not one of the provider's shapes (answered 400)."""


class CallbackUnauthorized(CallbackInvalid):
    """A callback whose signature is missing, stale or wrong (answered 401)."""


@dataclass
class Provider(ABC):
    """A provider of the Aleph model behind one interface: submit, parse a callback, poll, classify."""

    id: str
    base_url: str
    api_key: Callable[[], str]
    http: httpx.Client
    models: tuple[str, ...]
    default_result_hosts: tuple[str, ...]
    result_hosts: tuple[str, ...] = field(default=())
    # The key the provider signs callbacks with, if the account has one configured.
    webhook_key: Callable[[], str | None] = field(default=lambda: None)
    docs: ClassVar[ProviderDocs | None] = None  # set by each adapter; read without an instance
    # A submit that names its own task id (``own_reference``) and that the provider refuses to run
    # twice (Runware answers a taken taskUUID with conflictTaskUUID): an ambiguous answer may then
    # be followed by the same submit, which either creates the task or proves it exists.
    idempotent_submit: ClassVar[bool] = False
    # False for a provider that never calls back (Runway): intake starts a per-job poll loop (``polling``).
    webhooks: ClassVar[bool] = True

    @property
    def default_model(self) -> str:
        return self.models[0]

    def resolve_model(self, sidecar: Sidecar) -> str:
        if sidecar.model is None:
            return self.default_model
        if sidecar.model not in self.models:
            raise JobError(
                "unknown_model",
                f"model `{sidecar.model}` is not offered by provider `{self.id}`; use one of: {', '.join(self.models)}",
                STAGE_INTAKE,
            )
        return sidecar.model

    @abstractmethod
    def check(self, sidecar: Sidecar, model: str, video: VideoInfo | None) -> None:
        """Raise ``JobError`` for anything this provider/model cannot honour, before money is spent.

        Called without ``video`` as soon as the sidecar is read, and again once the video is known.
        """

    def check_declared(self, sidecar: Sidecar, model: str, video: VideoInfo | None, *, managed: frozenset[str]) -> None:
        """The checks an adapter's ``docs`` declare, so the README's matrix and intake never disagree:
        fields honoured, one reference image, prompt length, ``providerOptions`` that would replace
        what the pipeline sets (``managed``), video format and size."""
        docs = self.docs
        if docs is None:
            raise TypeError(f"{type(self).__name__} declares no ProviderDocs")
        extra = sidecar.given_fields - COMMON_FIELDS - docs.fields
        if extra:
            raise unsupported(self.id, model, extra)
        if sidecar.reference_images and len(sidecar.reference_images) > 1:
            raise JobError("unsupported_option", f"provider `{self.id}` takes one reference image, not {len(sidecar.reference_images)}", STAGE_INTAKE)
        if docs.max_prompt_chars is not None and len(sidecar.prompt) > docs.max_prompt_chars:
            raise JobError(
                "invalid_sidecar", f"the prompt is {len(sidecar.prompt)} characters; provider `{self.id}` takes at most {docs.max_prompt_chars}", STAGE_INTAKE
            )
        # Refused here, before the video is awaited or a submission claimed.
        merge_provider_options({}, sidecar.provider_options, managed)
        if video is None:
            return
        if video.extension not in docs.video_formats:
            raise JobError("video_unsupported", f"provider `{self.id}` takes {', '.join(docs.video_formats)} videos, not .{video.extension}", STAGE_INTAKE)
        if docs.max_video_bytes is not None and video.size is not None and video.size > docs.max_video_bytes:
            raise JobError(
                "video_too_large",
                f"the video is {video.size} bytes; provider `{self.id}` takes at most {docs.max_video_bytes} bytes ({docs.max_video_bytes // 2**20} MiB)",
                STAGE_INTAKE,
            )

    # Documented prices, model (or "*" for any) -> a price rule (see ``Settings.provider_prices``,
    # which overrides them key by key).
    default_prices: ClassVar[Mapping[str, Mapping[str, float]]] = {}

    def price_rule(self, model: str) -> dict[str, float]:
        """The price rule for ``model``: the adapter's defaults, then ``ProviderPrices`` for the
        provider, then for ``<provider>/<model>``, each overriding the one before."""
        prices = get_settings().provider_prices
        return {
            **self.default_prices.get("*", {}),
            **self.default_prices.get(model, {}),
            **prices.get(self.id, {}),
            **prices.get(f"{self.id}/{model}", {}),
        }

    def estimate_cost(self, sidecar: Sidecar, model: str, video: VideoInfo) -> float | None:
        """What the job will cost in USD, before it is sent; None when no price is known (or a
        price per second meets a video whose length is unknown)."""
        rule = self.price_rule(model)
        seconds = None if "perJob" in rule else video.known_duration()  # a price per job reads no header
        return cost_from_rule(rule, seconds, sidecar.number_results or 1)

    @abstractmethod
    def submit(self, request: SubmitRequest) -> str:
        """Send the edit; return the provider's task id or raise ``ProviderError``."""

    @abstractmethod
    def parse_callback(self, body: bytes, headers: Mapping[str, str]) -> Outcome:
        """Read a callback body; raise ``CallbackInvalid`` if it is none of the provider's shapes."""

    @abstractmethod
    def poll(self, task_id: str) -> Outcome:
        """Ask the provider, with our own key, what became of a task."""

    def own_reference(self, job_id: str) -> str | None:
        """A task id we chose ourselves, so a submission whose answer was lost can still be polled.

        None for providers that assign their own ids (we then learn it only from the answer or the callback).
        """
        return None

    def refresh_result_url(self, url: str, *, task_id: str | None = None, index: int = 0) -> str | None:
        """A fresh link for a result link that expired or was refused (403/404/410), or None when
        the provider offers none. ``task_id`` and ``index`` (the result's place in the task's
        output) are for a provider that gives fresh links on a new fetch of the task. Raises
        ``TransientError`` when it could not be asked just now."""
        return None

    @abstractmethod
    def classify_error(self, status: int | None, body: Any) -> ProviderError:
        """Map an HTTP status and body to refused / retryable / ambiguous."""

    def submit_failure(self, status: int | None, body: Any) -> ProviderError:
        """A submit's failed answer. A 5xx or a gateway error may come after the task was created,
        so only an answer that says the request was not taken (429, 455 maintenance) may be sent
        again; every other retryable answer is ambiguous: the job waits, it is never resubmitted."""
        error = self.classify_error(status, body)
        if error.kind != "retryable" or status == 429 or error.code in NOT_TAKEN_CODES:
            return error
        server_error = (status or 0) >= 500 or status == 408 or (error.code.isdigit() and int(error.code) >= 500)
        if not server_error:
            return error  # the provider's own structured refusal of the request (a 4xx): it was not taken
        return ProviderError("ambiguous", error.code, f"{error.message} (the request may have been taken)", status)

    # The call that proves the key and costs nothing (``verify_key``; the README names it).
    key_check: ClassVar[str] = ""

    def verify_key(self) -> str | None:
        """None when the provider accepts the API key (through ``key_check``, a call that costs
        nothing), else what to do about it. Never says the key."""
        try:
            status = self._key_check_status()
        except JobError as exc:  # no key for this provider in the secret
            return f"{exc.message}: add it"
        except ProviderError as exc:
            return f"could not ask {self.id} ({exc.message}): check {self.base_url} is reachable, then run this again"
        if 200 <= status < 300:
            return None
        if status in (401, 403):
            return f"{self.id} refused the API key ({self.key_check} answered {status}): put a valid `{self.id}` key in the provider secret"
        return f"{self.id} answered {status} to {self.key_check}: the key could not be checked; try again later"

    def _key_check_status(self) -> int:
        """Send ``key_check``; the status it answered (the body's own code for a provider that answers 200 with one)."""
        raise NotImplementedError(f"{type(self).__name__} has no key check")

    @property
    def allowed_result_hosts(self) -> tuple[str, ...]:
        return self.result_hosts or self.default_result_hosts

    # Shared plumbing for the adapters.

    def _send(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """One HTTP exchange; transport failures become ``ProviderError`` of the right kind."""
        url = f"{self.base_url}{path}"
        try:
            response = self.http.request(method, url, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # The request never left: safe to try again.
            raise ProviderError("retryable", "connect_error", f"could not reach {self.id}: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            # Sent, but no answer: the provider may have accepted it.
            raise ProviderError("ambiguous", "no_answer", f"{self.id} did not answer: {type(exc).__name__}") from exc
        try:
            body: Any = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        return response.status_code, body

    @staticmethod
    def provider_failure(message: str, retryable: bool = False, code: str = "generation_failed") -> JobError:
        return JobError(code, message, STAGE_PROVIDER, retryable=retryable)


def cost_from_rule(rule: Mapping[str, float], seconds: float | None, results: int) -> float | None:
    """USD for ``results`` results of a ``seconds``-long video under a price rule: ``perJob``,
    ``perSecond``, or ``creditsPerSecond`` x ``creditUsd``; None when the rule cannot say."""
    if "perJob" in rule:
        return round(rule["perJob"] * results, 6)
    per_second = rule.get("perSecond")
    if per_second is None and "creditsPerSecond" in rule and "creditUsd" in rule:
        per_second = rule["creditsPerSecond"] * rule["creditUsd"]
    if per_second is None or seconds is None:
        return None
    return round(per_second * seconds * results, 6)


def unsupported(provider: str, model: str, fields: Set[str]) -> JobError:
    names = ", ".join(f"`{name}`" for name in sorted(fields))
    return JobError(
        "unsupported_option",
        f"{names} cannot be honoured by provider `{provider}` with model `{model}`",
        STAGE_INTAKE,
    )


def merge_provider_options(body: dict[str, Any], options: Mapping[str, Any] | None, managed: frozenset[str]) -> dict[str, Any]:
    """Merge a sidecar's ``providerOptions`` into a request body; fields the pipeline manages stay ours."""
    if not options:
        return body
    clashes = sorted(set(options) & managed)
    if clashes:
        raise JobError(
            "invalid_sidecar",
            f"providerOptions may not set {', '.join(f'`{name}`' for name in clashes)}: the pipeline sets it",
            STAGE_INTAKE,
        )
    return {**body, **options}
