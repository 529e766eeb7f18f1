"""The pieces of pacing that need no AWS: limits as configured, the retry message, what counts as a
429, and the simulator's sliding-window limit."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from aleph_pipeline import pacing
from aleph_pipeline.config import get_settings
from aleph_pipeline.providers import ProviderError
from local.simulator.limits import RateLimits

WIRING_ENV = {"JOBS_TABLE_NAME": "jobs", "INPUT_BUCKET_NAME": "in", "OUTPUT_BUCKET_NAME": "out"}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name, value in WIRING_ENV.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_the_defaults_pace_kie_and_apikley_at_20_per_10_seconds_and_nothing_else(env: pytest.MonkeyPatch) -> None:
    assert pacing.limit_for("kie") == pacing.limit_for("apikley") == pacing.RateLimit(20, 10.0)
    assert pacing.limit_for("kie").interval == 0.5  # type: ignore[union-attr]
    for provider in ("runware", "crun", "runway", "replicate"):
        assert pacing.limit_for(provider) is None


def test_the_stack_parameter_overrides_a_default_and_sets_a_limit(env: pytest.MonkeyPatch) -> None:
    env.setenv("PROVIDER_RATE_LIMITS", json.dumps({"kie": "none", "crun": "5/1"}))
    get_settings.cache_clear()
    assert pacing.limit_for("kie") is None
    assert pacing.limit_for("crun") == pacing.RateLimit(5, 1.0)
    assert pacing.limit_for("apikley") == pacing.RateLimit(20, 10.0)
    env.setenv("PROVIDER_RATE_LIMITS", json.dumps({"kie": " 2 / 1.5 ", "apikley": ""}))
    get_settings.cache_clear()
    assert pacing.limit_for("kie") == pacing.RateLimit(2, 1.5)
    assert pacing.limit_for("apikley") is None  # empty: no limit, like "none"


@pytest.mark.parametrize("bad", ["20 per 10", "0/10", "20/0", "20/", "/10", "x/y"])
def test_a_limit_that_cannot_be_read_stops_the_settings_and_names_the_provider(env: pytest.MonkeyPatch, bad: str) -> None:
    env.setenv("PROVIDER_RATE_LIMITS", json.dumps({"kie": bad}))
    with pytest.raises(ValidationError, match="`kie`"):
        get_settings()


def test_the_retry_message_is_recognised_and_an_s3_notification_is_not() -> None:
    assert pacing.retry_job_id(json.dumps({"retryJob": "abc"})) == "abc"
    assert pacing.retry_job_id(json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]})) is None
    assert pacing.retry_job_id(json.dumps({"retryJob": ""})) is None
    assert pacing.retry_job_id("not json") is None


def test_only_a_rate_limit_answer_counts_as_429() -> None:
    assert pacing.is_rate_limited(ProviderError("retryable", "429", "slow down", status=429))
    assert pacing.is_rate_limited(ProviderError("retryable", "429", "kie says it in the body", status=200))
    assert not pacing.is_rate_limited(ProviderError("retryable", "500", "server error", status=500))
    assert not pacing.is_rate_limited(ProviderError("ambiguous", "502", "gateway", status=502))


def test_the_simulators_limit_is_a_sliding_window_and_counts_both_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("local.simulator.limits.time.monotonic", lambda: now[0])
    limits = RateLimits()
    limits.set({"kie": "2/1"})
    assert [limits.admit("kie") for _ in range(3)] == [True, True, False]
    assert limits.admit("runware")  # no limit set: always
    now[0] = 100.999
    assert not limits.admit("kie")
    now[0] = 101.0  # the first two left the window
    assert limits.admit("kie")
    assert limits.to_json() == {"kie": {"limit": "2/1", "accepted": 3, "refused": 2}}
    limits.set({"kie": "none"})
    assert limits.to_json() == {}
    with pytest.raises(ValueError, match="kie"):
        limits.set({"kie": "2 per second"})
