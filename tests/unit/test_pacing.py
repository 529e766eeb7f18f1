"""The pieces of pacing that need no AWS: limits as configured, the retry message, what counts as a
429, the simulator's sliding-window limit, and when a chained job's slot is too far to wait for."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from botocore.exceptions import ClientError

from aleph_pipeline import intake, pacing
from aleph_pipeline.config import SettingsError, get_settings
from aleph_pipeline.providers import ProviderError, get_provider
from aleph_pipeline.sidecar import validate_sidecar
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
    with pytest.raises(SettingsError, match="`kie`"):
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


class PaceItemTable:
    """The one ``pace#kie`` item and the two writes ``Pacer.take_slot`` makes, conditions and all."""

    def __init__(self, next_free_at: float | None) -> None:
        self.item: dict[str, Any] = {} if next_free_at is None else {"nextFreeAt": Decimal(str(next_free_at))}

    def update_item(self, *, UpdateExpression: str, ExpressionAttributeValues: dict[str, Decimal], ConditionExpression: str = "", **_: Any) -> Any:
        held, values = self.item.get("nextFreeAt"), ExpressionAttributeValues
        if UpdateExpression.startswith("SET"):
            if held is not None and held > values[":now"]:
                raise ClientError({"Error": {"Code": "ConditionalCheckFailedException"}}, "UpdateItem")
            self.item["nextFreeAt"] = values[":next"]
            return {}
        if ConditionExpression and not (held is not None and held <= values[":latest"]):
            raise ClientError({"Error": {"Code": "ConditionalCheckFailedException"}}, "UpdateItem")
        self.item["nextFreeAt"] = (held or Decimal(0)) + values[":step"]
        return {"Attributes": dict(self.item)}

    def get_item(self, **_: Any) -> Any:
        return {"Item": dict(self.item)}


LIMIT = pacing.RateLimit(1, 600.0)


def test_a_slot_within_the_bound_is_taken_and_one_past_it_is_not() -> None:
    table = PaceItemTable(1000.0 + 30)
    spacing = LIMIT.spacing  # the interval (600 s) and half the gate's margin
    assert pacing.Pacer(table).take_slot("kie", LIMIT, 1000.0, wait_at_most=60) == 1030.0
    assert table.item["nextFreeAt"] == Decimal(str(1030.0 + spacing))
    with pytest.raises(pacing.SlotTooFar) as caught:
        pacing.Pacer(table).take_slot("kie", LIMIT, 1000.0, wait_at_most=60)
    assert str(caught.value) == f"no slot at kie for {30 + spacing:.0f} s"
    assert table.item["nextFreeAt"] == Decimal(str(1030.0 + spacing))  # not taken: the next job gets it
    error = caught.value.to_job_error()
    assert (error.code, error.message) == ("provider_unavailable", f"no slot at kie for {30 + spacing:.0f} s")
    assert pacing.Pacer(table).take_slot("kie", LIMIT, 1000.0) == 1030.0 + spacing  # no bound: it waits as long as it takes


def test_an_idle_provider_sends_at_once_whatever_the_bound() -> None:
    table = PaceItemTable(None)
    assert pacing.Pacer(table).take_slot("kie", LIMIT, 1000.0, wait_at_most=0) == 1000.0


def sidecar_plan(document: dict[str, Any], provider: str, chain: tuple[str, ...] | None) -> Any:
    sidecar = validate_sidecar(document)
    video = intake.VideoSource("mp4", url="https://v.example/a.mp4")
    return intake.SubmitPlan(get_provider(provider), "aleph", sidecar, "{}", video, (), (), chain)


def test_only_a_job_whose_chain_goes_on_has_a_bound_and_it_goes_to_a_provider_that_honours_it(env: pytest.MonkeyPatch) -> None:
    env.setenv("PACE_MAX_WAIT_SECONDS", "120")
    get_settings.cache_clear()
    assert intake._pace_bound(sidecar_plan({"prompt": "x"}, "kie", None)) is None  # no chain: it waits
    assert intake._pace_bound(sidecar_plan({"prompt": "x"}, "apikley", ("kie", "apikley"))) is None  # the chain's last
    chained = sidecar_plan({"prompt": "x"}, "kie", ("kie", "apikley"))
    assert intake._pace_bound(chained) == 120
    assert intake._next_in_chain(chained).id == "apikley"  # type: ignore[union-attr]
    # crun takes no watermark: apikley after it does; with crun alone after kie the job stays.
    marked = {"prompt": "x", "watermark": "team"}
    assert intake._next_in_chain(sidecar_plan(marked, "kie", ("kie", "crun", "apikley"))).id == "apikley"  # type: ignore[union-attr]
    assert intake._next_in_chain(sidecar_plan(marked, "kie", ("kie", "crun"))) is None
