"""Settings read once from the environment (the template's Globals, or the local stack).

Each field is read from the variable of its name in any case (``JOBS_TABLE_NAME`` for
``jobs_table_name``); a dict or list field's variable holds JSON. A frozen stdlib dataclass, not a
pydantic model: every function reads Settings on its cold start, and pydantic's model machinery
cost more to import than all else a function such as notify needs. Each field's type, default and
bounds are declared here and checked by ``Settings.model_validate`` (a ``SettingsError`` naming the
variable and each problem); the names ``model_fields``, ``model_validate`` and
``model_fields_set`` are kept, so no caller changed.

A *wiring* field (``WIRING``) names a resource or a URL of the stack: its default is no value a
deployed function could work with, so the template must give each function that reads it the
variable. The local stack watches for wiring fields read with their default and names them.
"""

# No ``from __future__ import annotations``: ``Settings.model_fields`` reads each field's type
# object from the class, with nothing to evaluate.
import dataclasses
import json
import operator
import os
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Literal, get_args, get_origin

WIRING: dict[str, Any] = {"wiring": True}


class SettingsError(ValueError):
    """The environment does not give a valid value for one or more settings."""


def _setting(default: Any = dataclasses.MISSING, *, wiring: bool = False, **bounds: float) -> Any:
    """A field: its default (none: required), whether it is wiring, and its bounds (ge, gt, le, lt)."""
    return dataclasses.field(default=default, metadata={"bounds": bounds, "json_schema_extra": WIRING if wiring else None})


@dataclass(frozen=True)
class Settings:
    """The pipeline's settings (``get_settings``), one field per environment variable."""

    # name -> type, default, bounds and wiring mark of each field (set below, once the class exists)
    model_fields: ClassVar[dict[str, "FieldInfo"]]

    jobs_table_name: str = _setting(wiring=True)
    input_bucket_name: str = _setting(wiring=True)
    output_bucket_name: str = _setting(wiring=True)
    input_prefix: str = "incoming/"
    # After a job is COMPLETED: leave its input sidecar and video, tag them, or delete them (cleanup.py).
    input_cleanup: Literal["none", "tag", "delete"] = "none"
    default_provider: str = "kie"
    # The failover chain (``ProviderChain``): provider ids, comma-separated, tried in order; empty = none.
    provider_chain: str = ""
    callback_api_url: str = _setting("", wiring=True)
    provider_secret_id: str = _setting("", wiring=True)
    presigned_url_ttl_seconds: int = _setting(3600, ge=60, le=7 * 24 * 3600)
    pairing_timeout_seconds: int = _setting(3600, ge=1)
    job_deadline_seconds: int = _setting(86400, ge=1)
    # Overrides used by the local stack; production leaves them empty.
    provider_endpoints: dict[str, str] = dataclasses.field(default_factory=dict)
    result_hosts: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    allow_http_result_urls: bool = False
    max_result_bytes: int = _setting(2 * 1024**3, ge=1)
    # A result download that takes longer than this is abandoned and retried.
    max_result_seconds: int = _setting(600, ge=1)
    # Prices for cost estimates (USD), "<provider>" or "<provider>/<model>" -> a rule: {"perJob": x},
    # {"perSecond": x} (of input video) or {"creditUsd": x} with {"creditsPerSecond": n} where the
    # provider prices in credits. {} keeps each adapter's documented defaults.
    provider_prices: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    # Spend limits in USD across every instance (``budget``); None (an empty parameter) is no limit.
    daily_budget_usd: float | None = _setting(None, ge=0)
    monthly_budget_usd: float | None = _setting(None, ge=0)
    # Before finalize copies anything, ask the provider (with our key) whether the task really
    # succeeded and where its results are: a callback is a notification, not the truth.
    confirm_results_by_polling: bool = True
    # How long a provider call waits for the answer once the request is sent. A submit that times
    # out here is ambiguous (the task may exist) and is never sent again.
    provider_read_timeout_seconds: float = _setting(30.0, gt=0, le=300)
    # Submit attempts (SQS receives) before a retryable provider refusal fails the job; kept
    # below the queue's maxReceiveCount so a job is failed with a reason, never dropped to the DLQ.
    submit_max_attempts: int = _setting(4, ge=1)
    # New tasks per window per provider (``pacing``): {"kie": "20/10", "crun": "none"} over the
    # defaults from providers.md; the pace queue takes a waiting job up again at its slot.
    provider_rate_limits: dict[str, str] = dataclasses.field(default_factory=dict)
    # A job with a failover chain waits this long at most for its provider's slot, then moves on.
    pace_max_wait_seconds: float = _setting(900, ge=0)
    # Tasks in flight per provider (``inflight``): {"runway": 3, "crun": "none"} over the defaults
    # (Runway's tier 1: 1); "none" (None here) lifts a default. A job over it waits for a slot.
    provider_concurrency: dict[str, int | None] = dataclasses.field(default_factory=dict)
    # Where a job waiting for its provider slot gets its delayed message (PaceQueue); none: it waits for the reconciler.
    pace_queue_url: str = _setting("", wiring=True)
    secret_max_age_seconds: int = _setting(300, ge=0)
    # The reconciler: how long a callback may be late before the provider is polled, how long a
    # SUCCEEDED job may wait for finalize before it is nudged, and how much work one run takes on.
    callback_grace_seconds: int = _setting(600, ge=0)
    finalize_grace_seconds: int = _setting(1800, ge=0)
    finalize_max_nudges: int = _setting(3, ge=0)
    # A submission claim younger than this may belong to a submit still running (the function
    # times out at 120 s): the reconciler leaves it alone until then.
    claim_settle_seconds: int = _setting(300, ge=0)
    reconcile_batch_size: int = _setting(50, ge=1, le=1000)
    # The submit queue's dead-letter queue: the reconciler runs intake again for what it holds (an
    # event that met AWS errors on every delivery), so no upload is lost; a message that keeps
    # failing there is left for the alarm after ``dead_letter_max_redrives`` tries.
    submit_dead_letter_queue_url: str = _setting("", wiring=True)
    dead_letter_max_redrives: int = _setting(20, ge=1)
    # Where job notifications go (EventBridge), and the stack they name.
    event_bus_name: str = _setting("default", wiring=True)
    stack_name: str = _setting("aleph", wiring=True)
    # Where the notify function keeps the events EventBridge did not take (UndeliveredJobEventQueue).
    undelivered_event_queue_url: str = _setting("", wiring=True)
    # The per-job poll loop of providers without webhooks (``polling``): the queue its delayed
    # messages go through, the first delay, the growth per poll, the cap (SQS delays at most
    # 900 s), the jitter (a fraction either way) and the most polls one job is given.
    poll_queue_url: str = _setting("", wiring=True)
    poll_first_delay_seconds: int = _setting(6, ge=1, le=900)
    poll_backoff_factor: float = _setting(1.5, ge=1.0, le=10.0)
    poll_max_delay_seconds: int = _setting(60, ge=1, le=900)
    poll_jitter: float = _setting(0.2, ge=0.0, lt=1.0)
    poll_max_polls: int = _setting(1600, ge=1)

    def __post_init__(self) -> None:
        # Made directly, every field was given; ``model_validate`` records what the environment gave.
        object.__setattr__(self, "__pydantic_fields_set__", frozenset(self.model_fields))

    @property
    def model_fields_set(self) -> frozenset[str]:
        """The fields given a value (by a variable), not left at their default."""
        fields_set: frozenset[str] = self.__pydantic_fields_set__  # type: ignore[attr-defined]
        return fields_set

    @classmethod
    def model_validate(cls, values: Mapping[str, Any]) -> "Settings":
        """Settings from field values (strings as variables hold them, or decoded JSON); unknown
        names are ignored. Raises ``SettingsError`` naming every missing or invalid variable."""
        checked: dict[str, Any] = {}
        problems: list[str] = []
        for name, info in model_fields.items():
            if name not in values:
                if info.required:
                    problems.append(f"{name.upper()} ({name}) is required and not set")
                continue
            try:
                raw = _BEFORE_CHECKS.get(name, _same)(values[name])
                checked[name] = _AFTER_CHECKS.get(name, _same)(_value(info, raw))
            except ValueError as error:
                problems.append(f"{name.upper()} ({name}) {error}")
        if problems:
            raise SettingsError("invalid settings: " + "; ".join(problems))
        settings = cls(**checked)
        # The local stack's env guard reads this name (what pydantic called the fields set).
        object.__setattr__(settings, "__pydantic_fields_set__", frozenset(checked))
        return settings


class FieldInfo:
    """What ``Settings.model_fields`` says of a field."""

    __slots__ = ("annotation", "bounds", "default", "json_schema_extra", "required")

    def __init__(self, field: "dataclasses.Field[Any]") -> None:
        self.annotation: Any = field.type
        self.required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        self.default: Any = _default(field)
        self.bounds: Mapping[str, float] = field.metadata.get("bounds", {})
        self.json_schema_extra: dict[str, Any] | None = field.metadata.get("json_schema_extra")


def _default(field: "dataclasses.Field[Any]") -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


model_fields: dict[str, FieldInfo] = {field.name: FieldInfo(field) for field in dataclasses.fields(Settings)}
Settings.model_fields = model_fields

_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}
_BOUNDS = {"ge": (operator.ge, "at least"), "gt": (operator.gt, "more than"), "le": (operator.le, "at most"), "lt": (operator.lt, "less than")}


def _value(info: FieldInfo, raw: Any) -> Any:
    value = _typed(info.annotation, raw)
    for bound, limit in info.bounds.items():
        holds, words = _BOUNDS[bound]
        if value is not None and not holds(value, limit):
            raise ValueError(f"must be {words} {limit:g}, not {value!r}")
    return value


def _typed(annotation: Any, raw: Any) -> Any:
    """``raw`` as ``annotation`` (str, bool, int, float, a Literal, X | None, dict[str, X],
    list[X]), converting from text as an environment variable holds it; ValueError if it is not."""
    origin = get_origin(annotation)
    if annotation is str:
        if not isinstance(raw, str):
            raise ValueError(f"must be text, not {type(raw).__name__}")
        return raw
    if annotation is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise ValueError(f"must be true or false, not {raw!r}")
    if annotation is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and re.fullmatch(r"\s*[+-]?\d+(?:\.0*)?\s*", raw):
            return int(raw.strip().split(".")[0])
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        raise ValueError(f"must be a whole number, not {raw!r}")
    if annotation is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        try:
            return float(raw) if isinstance(raw, str) else float("")  # float("") raises: not a number
        except ValueError:
            raise ValueError(f"must be a number, not {raw!r}") from None
    if origin is Literal:
        if raw not in get_args(annotation):
            raise ValueError(f"must be one of {', '.join(map(repr, get_args(annotation)))}, not {raw!r}")
        return raw
    if origin is types.UnionType:  # X | None
        (inner,) = (arg for arg in get_args(annotation) if arg is not type(None))
        return None if raw is None else _typed(inner, raw)
    if origin is dict:
        if not isinstance(raw, dict):
            raise ValueError(f"must be a JSON object, not {type(raw).__name__}")
        _, item = get_args(annotation)
        typed: dict[str, Any] = {}
        for key, value in raw.items():
            try:
                typed[str(key)] = _typed(item, value)
            except ValueError as error:
                raise ValueError(f"`{key}`: {error}") from None
        return typed
    if origin is list:
        if not isinstance(raw, list):
            raise ValueError(f"must be a JSON list, not {type(raw).__name__}")
        (item,) = get_args(annotation)
        return [_typed(item, value) for value in raw]
    raise TypeError(f"no conversion for settings of type {annotation}")  # a field declared wrong


def _same(value: Any) -> Any:
    return value


def _prefix_ends_with_slash(value: str) -> str:
    value = value.lstrip("/")
    return value if not value or value.endswith("/") else value + "/"


def _rate_limits_read(value: dict[str, str]) -> dict[str, str]:
    for provider, limit in value.items():
        match = re.fullmatch(r"\s*(?:none|(\d+)\s*/\s*(\d+(?:\.\d+)?))?\s*", limit.lower())
        if match is None or (match.group(1) is not None and (int(match.group(1)) < 1 or float(match.group(2)) <= 0)):
            raise ValueError(f"provider_rate_limits: `{provider}` must be `<tasks>/<seconds>` (e.g. `20/10`) or `none`, not `{limit}`")
    return value


def _empty_is_no_budget(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def _none_is_no_limit(value: Any) -> Any:
    """Concurrency limits with the providers marked "none" as None: no limit, over any default."""
    if not isinstance(value, dict):
        return value
    return {provider: None if isinstance(limit, str) and limit.strip().lower() in ("", "none") else limit for provider, limit in value.items()}


def _concurrency_read(value: dict[str, int | None]) -> dict[str, int | None]:
    for provider, limit in value.items():
        if limit is not None and limit < 1:
            raise ValueError(f"provider_concurrency: `{provider}` must be a whole number of tasks (at least 1) or `none`, not `{limit}`")
    return value


# Checks beyond a field's type and bounds: before them (on the raw value) and after them.
_BEFORE_CHECKS: dict[str, Any] = {
    "daily_budget_usd": _empty_is_no_budget,
    "monthly_budget_usd": _empty_is_no_budget,
    "provider_concurrency": _none_is_no_limit,
}
_AFTER_CHECKS: dict[str, Any] = {
    "provider_concurrency": _concurrency_read,
    "input_prefix": _prefix_ends_with_slash,
    "provider_rate_limits": _rate_limits_read,
    "callback_api_url": lambda value: value.rstrip("/"),
}


_STRUCTURED = (dict, list, tuple, set, frozenset)


def environment_values(environ: dict[str, str] | os._Environ[str] = os.environ) -> dict[str, Any]:
    """The fields' values found in ``environ`` (names in any case), structured ones decoded from JSON."""
    by_name = {name.lower(): value for name, value in environ.items()}
    values: dict[str, Any] = {}
    for field, info in Settings.model_fields.items():
        if field not in by_name:
            continue
        value: Any = by_name[field]
        if (get_origin(info.annotation) or info.annotation) in _STRUCTURED:
            try:
                value = json.loads(value)
            except ValueError as error:  # the value is not shown: it may be long, and it is config
                raise ValueError(f"environment variable {field.upper()} must hold JSON ({error})") from None
        values[field] = value
    return values


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.model_validate(environment_values())
