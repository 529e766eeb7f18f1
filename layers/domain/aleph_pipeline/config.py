"""Settings read once from the environment (the template's Globals, or the local stack).

Each field is read from the variable of its name in any case (``JOBS_TABLE_NAME`` for
``jobs_table_name``); a dict or list field's variable holds JSON. A plain pydantic model fed from
``os.environ``: pydantic-settings did the same at an import cost every cold start paid.

A *wiring* field (``WIRING``) names a resource or a URL of the stack: its default is no value a
deployed function could work with, so the template must give each function that reads it the
variable. The local stack watches for wiring fields read with their default and names them.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from typing import Any, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator

WIRING: dict[str, Any] = {"wiring": True}


class Settings(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    jobs_table_name: str = Field(json_schema_extra=WIRING)
    input_bucket_name: str = Field(json_schema_extra=WIRING)
    output_bucket_name: str = Field(json_schema_extra=WIRING)
    input_prefix: str = "incoming/"
    # After a job is COMPLETED: leave its input sidecar and video, tag them, or delete them (cleanup.py).
    input_cleanup: Literal["none", "tag", "delete"] = "none"
    default_provider: str = "kie"
    # The failover chain (``ProviderChain``): provider ids, comma-separated, tried in order; empty = none.
    provider_chain: str = ""
    callback_api_url: str = Field(default="", json_schema_extra=WIRING)
    provider_secret_id: str = Field(default="", json_schema_extra=WIRING)
    presigned_url_ttl_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    pairing_timeout_seconds: int = Field(default=3600, ge=1)
    job_deadline_seconds: int = Field(default=86400, ge=1)
    # Overrides used by the local stack; production leaves them empty.
    provider_endpoints: dict[str, str] = Field(default_factory=dict)
    result_hosts: dict[str, list[str]] = Field(default_factory=dict)
    allow_http_result_urls: bool = False
    max_result_bytes: int = Field(default=2 * 1024**3, ge=1)
    # A result download that takes longer than this is abandoned and retried.
    max_result_seconds: int = Field(default=600, ge=1)
    # Prices for cost estimates (USD), "<provider>" or "<provider>/<model>" -> a rule: {"perJob": x},
    # {"perSecond": x} (of input video) or {"creditUsd": x} with {"creditsPerSecond": n} where the
    # provider prices in credits. {} keeps each adapter's documented defaults.
    provider_prices: dict[str, dict[str, float]] = Field(default_factory=dict)
    # Spend limits in USD across every instance (``budget``); None (an empty parameter) is no limit.
    daily_budget_usd: float | None = Field(default=None, ge=0)
    monthly_budget_usd: float | None = Field(default=None, ge=0)
    # Before finalize copies anything, ask the provider (with our key) whether the task really
    # succeeded and where its results are: a callback is a notification, not the truth.
    confirm_results_by_polling: bool = True
    # How long a provider call waits for the answer once the request is sent. A submit that times
    # out here is ambiguous (the task may exist) and is never sent again.
    provider_read_timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    # Submit attempts (SQS receives) before a retryable provider refusal fails the job; kept
    # below the queue's maxReceiveCount so a job is failed with a reason, never dropped to the DLQ.
    submit_max_attempts: int = Field(default=4, ge=1)
    # New tasks per window per provider (``pacing``): {"kie": "20/10", "crun": "none"} over the
    # defaults from providers.md; the submit queue takes a waiting job up again at its slot.
    provider_rate_limits: dict[str, str] = Field(default_factory=dict)
    # A job with a failover chain waits this long at most for its provider's slot, then moves on.
    pace_max_wait_seconds: float = Field(default=900, ge=0)
    # Tasks in flight per provider (``inflight``): {"runway": 3, "crun": "none"} over the defaults
    # (Runway's tier 1: 1); a job over it waits in RECEIVED for a slot.
    provider_concurrency: dict[str, int | None] = Field(default_factory=dict)
    submit_queue_url: str = ""
    secret_max_age_seconds: int = Field(default=300, ge=0)
    # The reconciler: how long a callback may be late before the provider is polled, how long a
    # SUCCEEDED job may wait for finalize before it is nudged, and how much work one run takes on.
    callback_grace_seconds: int = Field(default=600, ge=0)
    finalize_grace_seconds: int = Field(default=1800, ge=0)
    finalize_max_nudges: int = Field(default=3, ge=0)
    # A submission claim younger than this may belong to a submit still running (the function
    # times out at 120 s): the reconciler leaves it alone until then.
    claim_settle_seconds: int = Field(default=300, ge=0)
    reconcile_batch_size: int = Field(default=50, ge=1, le=1000)
    # The submit queue's dead-letter queue: the reconciler runs intake again for what it holds (an
    # event that met AWS errors on every delivery), so no upload is lost; a message that keeps
    # failing there is left for the alarm after ``dead_letter_max_redrives`` tries.
    submit_dead_letter_queue_url: str = Field(default="", json_schema_extra=WIRING)
    dead_letter_max_redrives: int = Field(default=20, ge=1)
    # Where job notifications go (EventBridge), and the stack they name.
    event_bus_name: str = Field(default="default", json_schema_extra=WIRING)
    stack_name: str = Field(default="aleph", json_schema_extra=WIRING)
    # Where the notify function keeps the events EventBridge did not take (UndeliveredJobEventQueue).
    undelivered_event_queue_url: str = Field(default="", json_schema_extra=WIRING)
    # The per-job poll loop of providers without webhooks (``polling``): the queue its delayed
    # messages go through, the first delay, the growth per poll, the cap (SQS delays at most
    # 900 s), the jitter (a fraction either way) and the most polls one job is given.
    poll_queue_url: str = Field(default="", json_schema_extra=WIRING)
    poll_first_delay_seconds: int = Field(default=6, ge=1, le=900)
    poll_backoff_factor: float = Field(default=1.5, ge=1.0, le=10.0)
    poll_max_delay_seconds: int = Field(default=60, ge=1, le=900)
    poll_jitter: float = Field(default=0.2, ge=0.0, lt=1.0)
    poll_max_polls: int = Field(default=1600, ge=1)

    @field_validator("input_prefix")
    @classmethod
    def _prefix_ends_with_slash(cls, value: str) -> str:
        value = value.lstrip("/")
        return value if not value or value.endswith("/") else value + "/"

    @field_validator("daily_budget_usd", "monthly_budget_usd", mode="before")
    @classmethod
    def _empty_is_no_budget(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("provider_rate_limits")
    @classmethod
    def _rate_limits_read(cls, value: dict[str, str]) -> dict[str, str]:
        for provider, limit in value.items():
            match = re.fullmatch(r"\s*(?:none|(\d+)\s*/\s*(\d+(?:\.\d+)?))?\s*", limit.lower())
            if match is None or (match.group(1) is not None and (int(match.group(1)) < 1 or float(match.group(2)) <= 0)):
                raise ValueError(f"provider_rate_limits: `{provider}` must be `<tasks>/<seconds>` (e.g. `20/10`) or `none`, not `{limit}`")
        return value

    @field_validator("provider_concurrency", mode="before")
    @classmethod
    def _concurrency_read(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value
        read: dict[str, int | None] = {}
        for provider, limit in value.items():
            if isinstance(limit, str) and limit.strip().lower() in ("", "none"):
                read[str(provider)] = None
            elif isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1:
                read[str(provider)] = limit
            else:
                raise ValueError(f"provider_concurrency: `{provider}` must be a whole number of tasks >= 1 or `none`, not `{limit}`")
        return read

    @field_validator("callback_api_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")


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
