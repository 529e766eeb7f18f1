"""The crun.ai protocol for ``runway/gen-4-aleph``.

Create ``POST /api/v1/client/job/CreateTask`` with ``x-api-key`` and
``{"model", "callback_url", "input": {...}}``; poll ``GET /api/v1/client/job/TaskInfo?task_id=``
(``status`` pending|running|success|failed, ``result{code, message, media_urls}``). Answers carry
``{"code", "message", "data"}`` (``message``, not kie's ``msg``); validation errors add ``errors``.
The callback is "consistent with the data object of the status query": accepted bare
(``{task_id, status, result, ...}``) and wrapped in ``{code, message, data}``.

Read at run time, as crun's own client does: the model's ``input_schema``
(``GET /api/v1/client/job/Models/<model>``, a JSON schema whose ``properties`` name the ``input``
fields it permits) decides what intake lets through; ``POST /api/v1/client/job/EstimateTask``
``{model, input}`` answers ``data{estimated_credits, balance, affordable}`` for free, and runs
before every ``CreateTask`` (never retried: a retry can pay twice).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from ..errors import STAGE_INTAKE, STAGE_PROVIDER, STAGE_SUBMIT, JobError
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

if TYPE_CHECKING:  # types only: the sidecar model is built where a sidecar is read, not on every cold path
    from ..sidecar import Sidecar

CREATE_PATH = "/api/v1/client/job/CreateTask"
TASK_INFO_PATH = "/api/v1/client/job/TaskInfo"
MODEL_PATH = "/api/v1/client/job/Models/"  # + the model id: the model with its `input_schema`
ESTIMATE_PATH = "/api/v1/client/job/EstimateTask"
# How long a model's schema is trusted in one process: crun may change a model's fields, and a
# warm Lambda lives for hours.
SCHEMA_TTL_SECONDS = 600.0
# How long an affordable EstimateTask quote stands for the same input: the budget's estimate and the
# check before CreateTask are one quote, not two calls (a balance spent meanwhile is CreateTask's 402).
QUOTE_TTL_SECONDS = 60.0

# Sidecar field -> the `input` field it becomes. Which of them the model takes is not guessed:
# the model's live `input_schema` decides (crun's own client sends only the fields it permits),
# and a sidecar's `providerOptions` may add any other field that schema names.
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
# Maintenance, feature disabled, insufficient credits: not now, and not this provider (a chain moves on).
NOT_YOU_CODES = frozenset({455, 505, 402})


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


def intended_input(sidecar: Sidecar) -> dict[str, tuple[str, Any]]:
    """The `input` fields a sidecar will send, each with where it comes from and its value when
    intake already knows it (URLs are presigned only at submit: None)."""
    fields: dict[str, tuple[str, Any]] = {"prompt": ("`prompt`", sidecar.prompt), "video_url": ("`video`", None)}
    if sidecar.reference_images:
        fields["img_urls"] = ("`referenceImages`", None)
    if sidecar.aspect_ratio is not None:
        fields["aspect_ratio"] = ("`aspectRatio`", sidecar.aspect_ratio)
    if sidecar.seed is not None:
        fields["seed"] = ("`seed`", sidecar.seed)
    for name, value in (sidecar.provider_options or {}).items():
        fields[name] = (f"`providerOptions.{name}`", value)
    return fields


def check_against_schema(sidecar: Sidecar, model: str, schema: Mapping[str, Any]) -> None:
    """Refuse, naming the field and what the model takes, an `input` the model's schema does not
    permit: a field it does not list, a required one the sidecar leaves out, a value outside an enum."""
    properties: Mapping[str, Any] = schema["properties"]
    allowed = ", ".join(f"`{name}`" for name in sorted(properties))
    fields = intended_input(sidecar)
    refused = sorted(name for name in fields if name not in properties)
    if refused:
        named = ", ".join(f"`{name}` (from {fields[name][0]})" for name in refused)
        raise JobError("unsupported_option", f"crun's model `{model}` takes no input field {named}; its input_schema permits: {allowed}", STAGE_INTAKE)
    required = schema.get("required")
    missing = sorted(name for name in required if isinstance(name, str) and name not in fields) if isinstance(required, list) else []
    if missing:
        names = ", ".join(f"`{name}`" for name in missing)
        raise JobError(
            "invalid_sidecar", f"crun's model `{model}` requires input {names}, which the sidecar does not set (set it in providerOptions)", STAGE_INTAKE
        )
    for name, (source, value) in fields.items():
        spec = properties.get(name)
        choices = spec.get("enum") if isinstance(spec, Mapping) else None
        if value is not None and isinstance(choices, list) and value not in choices:
            listed = ", ".join(json.dumps(choice) for choice in choices)
            raise JobError("invalid_sidecar", f"{source} is {json.dumps(value)}; crun's model `{model}` takes `{name}` as one of: {listed}", STAGE_INTAKE)


@dataclass
class CrunProtocol(Provider):
    docs: ClassVar[ProviderDocs | None] = ProviderDocs(
        fields=frozenset(SUPPORTED_FIELDS) - COMMON_FIELDS,
        video_formats=VIDEO_EXTENSIONS,
        max_video_bytes=None,
        max_prompt_chars=MAX_PROMPT_CHARS,
        limits=(
            "one reference image; `input` fields are checked at intake against the model's live `input_schema`; "
            "a free `EstimateTask` runs before every `CreateTask`"
        ),
        price="per task, in crun credits (see its pricing page); no cost in dollars is reported back",
    )
    # Model id -> (monotonic expiry, its `input_schema`): read once per SCHEMA_TTL_SECONDS per process.
    _schemas: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict, init=False, repr=False, compare=False)
    # (model, input) as JSON -> (monotonic expiry, the credits quoted): affordable quotes only.
    _quotes: dict[str, tuple[float, float | None]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def check(self, sidecar: Sidecar, model: str, video: VideoInfo | None) -> None:
        self.check_declared(sidecar, model, video, managed=MANAGED_FIELDS)
        check_against_schema(sidecar, model, self.input_schema(model))

    def input_schema(self, model: str) -> dict[str, Any]:
        """The model's `input_schema` from ``GET Models/<model>``, cached for SCHEMA_TTL_SECONDS.

        No fallback table when the call fails: a guess is what this replaced, and a wrong guess
        is a refused or mis-read paid task. A failure crun may get over (no answer, 429, 5xx) is a
        retryable intake error: the event is retried and nothing was claimed or spent; a refusal
        (a bad key, a model crun no longer has) fails the job with crun's own words.
        """
        cached = self._schemas.get(model)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            status, body = self._send("GET", MODEL_PATH + quote(model, safe="/"), headers=self._auth())
        except ProviderError as exc:  # a GET: "no answer" is as safe to repeat as "not reached"
            raise JobError("provider_unavailable", f"crun's input schema for `{model}` could not be read: {exc.message}", STAGE_INTAKE, retryable=True) from exc
        data = body.get("data") if status == 200 and isinstance(body, dict) and body.get("code") == 200 else None
        if data is None:
            error = self.classify_error(status, body)
            code = "provider_rejected" if error.kind == "refused" else "provider_unavailable"
            raise JobError(
                code,
                f"crun's input schema for `{model}` could not be read: {error.message}",
                STAGE_INTAKE,
                retryable=error.kind != "refused",
                details={"providerCode": error.code},
            )
        schema = data.get("input_schema") if isinstance(data, dict) else None
        if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict) or not schema["properties"]:
            raise JobError("provider_unavailable", f"crun described `{model}` without an input_schema listing its properties", STAGE_INTAKE, retryable=True)
        self._schemas[model] = (time.monotonic() + SCHEMA_TTL_SECONDS, schema)
        return schema

    def request_body(self, request: SubmitRequest) -> dict[str, Any]:
        return {"model": request.model, "callback_url": request.callback_url, "input": crun_input(request)}

    def estimate_cost(self, sidecar: Sidecar, model: str, video: VideoInfo) -> float | None:
        """crun's own quote (``EstimateTask``, free) in credits x ``creditUsd`` from ``ProviderPrices``;
        without a credit price, a ``perJob`` price if one is set, else None (and no call)."""
        credit_usd = self.price_rule(model).get("creditUsd")
        if credit_usd is None or video.url is None:
            return super().estimate_cost(sidecar, model, video)
        credits = self.estimate(model, crun_input(SubmitRequest("", sidecar, model, video.url, (), "")))
        return None if credits is None else round(credits * credit_usd, 6)

    def estimate(self, model: str, given: dict[str, Any]) -> float | None:
        """``EstimateTask`` (free): the credits it quotes (None when it quotes none); raises
        ``JobError`` unless crun says this exact input is affordable.

        Every failure here is before anything is created, so none is ambiguous: one crun may get
        over is retryable, an answer that says not affordable (or 402) is ``insufficient_credits``.
        An affordable quote stands for QUOTE_TTL_SECONDS: the same input is not estimated twice.
        """
        key = json.dumps([model, given], sort_keys=True, default=str)
        now = time.monotonic()
        quoted = self._quotes.get(key)
        if quoted is not None and quoted[0] > now:
            return quoted[1]
        try:
            status, body = self._send("POST", ESTIMATE_PATH, json={"model": model, "input": given}, headers=self._auth())
        except ProviderError as exc:
            raise JobError("provider_unavailable", f"crun's estimate could not be read: {exc.message}", STAGE_SUBMIT, retryable=True) from exc
        data = body.get("data") if status == 200 and isinstance(body, dict) and body.get("code") == 200 else None
        if not isinstance(data, dict):
            error = self.classify_error(status, body)
            if error.code == "402":
                raise JobError("insufficient_credits", f"crun: the account has too few credits for this edit ({error.message})", STAGE_SUBMIT)
            code = "provider_rejected" if error.kind == "refused" else "provider_unavailable"
            raise JobError(
                code, f"crun refused the estimate: {error.message}", STAGE_SUBMIT, retryable=error.kind != "refused", details={"providerCode": error.code}
            )
        affordable, cost, balance = data.get("affordable"), data.get("estimated_credits"), data.get("balance")
        if affordable is True:
            credits = float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None
            self._quotes = {k: v for k, v in self._quotes.items() if v[0] > now}  # a warm process keeps no old quotes
            self._quotes[key] = (now + QUOTE_TTL_SECONDS, credits)
            return credits
        if affordable is not False:
            raise JobError("provider_unavailable", "crun's estimate did not say whether the edit is affordable", STAGE_SUBMIT, retryable=True)
        raise JobError(
            "insufficient_credits",
            f"crun says the edit is not affordable: it costs {cost} credits and the account has {balance}; nothing was created or spent",
            STAGE_SUBMIT,
            details={"estimatedCredits": cost, "balance": balance},
        )

    def submit(self, request: SubmitRequest) -> str:
        # The schema again (cached): a sidecar checked at intake against an older schema is
        # refused here, before anything is spent, rather than sent with fields crun no longer takes.
        schema = self.input_schema(request.model)
        check_against_schema(request.sidecar, request.model, schema)
        body = self.request_body(request)
        self.estimate(request.model, body["input"])
        status, body = self._send("POST", CREATE_PATH, json=body, headers=self._auth())
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
        not_you = effective in NOT_YOU_CODES
        if effective in RETRYABLE_CODES or (isinstance(effective, int) and effective >= 500 and effective not in (GENERATION_FAILED, 505)):
            return ProviderError("retryable", str(effective), f"{self.id}: {text}", status, not_you=not_you)
        if effective == 200 or effective is None:
            # HTTP 200 without a readable body: the request may have been taken.
            return ProviderError("ambiguous", "unreadable", f"{self.id} gave an unreadable answer ({text})", status)
        return ProviderError("refused", str(effective), f"{self.id}: {text}", status, not_you=not_you)

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

    key_check: ClassVar[str] = f"GET {MODEL_PATH}runway/gen-4-aleph (the model's input schema)"

    def _key_check_status(self) -> int:
        status, body = self._send("GET", MODEL_PATH + quote(self.default_model, safe="/"), headers=self._auth())
        return _answered(status, body)

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


def _answered(status: int, body: Any) -> int:
    """The body's own ``code`` when the provider answers HTTP 200 with one, else the HTTP status."""
    code = body.get("code") if isinstance(body, dict) else None
    return int(code) if isinstance(code, int) and not isinstance(code, bool) else status
