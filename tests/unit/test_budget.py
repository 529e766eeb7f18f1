"""Each provider's cost estimate, the price settings, and the budget's refusals that need no table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from aleph_pipeline import budget
from aleph_pipeline.config import get_settings
from aleph_pipeline.errors import JobError
from aleph_pipeline.providers import build_provider
from aleph_pipeline.providers.base import VideoInfo
from aleph_pipeline.sidecar import parse_sidecar


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def prices(monkeypatch: pytest.MonkeyPatch, **rules: dict[str, float]) -> None:
    monkeypatch.setenv("PROVIDER_PRICES", json.dumps({name.replace("__", "/"): rule for name, rule in rules.items()}))
    get_settings.cache_clear()


def adapter(provider: str, calls: list[httpx.Request] | None = None, answer: dict[str, Any] | None = None) -> Any:
    def handle(request: httpx.Request) -> httpx.Response:
        if calls is not None:
            calls.append(request)
        return httpx.Response(200, json=answer or {})

    return build_provider(provider, http=httpx.Client(transport=httpx.MockTransport(handle)), api_key=lambda: "key")


def sidecar(**fields: Any) -> Any:
    return parse_sidecar(json.dumps({"prompt": "snow", **fields}).encode())[0]


def video(seconds: float | None, url: str | None = None) -> VideoInfo:
    info = VideoInfo("mp4", None, url=url)
    info.__dict__["duration"] = seconds  # as check_container records the header's duration
    return info


def test_runware_aleph_2_is_28_cents_a_second_for_each_result() -> None:
    runware = adapter("runware")
    assert runware.estimate_cost(sidecar(), "runway:aleph@2.0", video(10.0)) == pytest.approx(2.8)
    assert runware.estimate_cost(sidecar(numberResults=3), "runway:aleph@2.0", video(10.0)) == pytest.approx(8.4)
    # Known only by URL: priced at the longest video Aleph 2.0 takes, never short.
    assert runware.estimate_cost(sidecar(), "runway:aleph@2.0", video(None)) == pytest.approx(0.28 * 30)


def test_runware_aleph_1_and_a_price_setting_for_one_model(monkeypatch: pytest.MonkeyPatch) -> None:
    assert adapter("runware").estimate_cost(sidecar(), "runway:2@1", video(10.0)) is None  # no published rate
    monkeypatch.setenv("PROVIDER_PRICES", json.dumps({"runware/runway:2@1": {"perSecond": 0.1}}))
    get_settings.cache_clear()
    assert adapter("runware").estimate_cost(sidecar(numberResults=2), "runway:2@1", video(10.0)) == pytest.approx(2.0)
    assert adapter("runware").estimate_cost(sidecar(), "runway:aleph@2.0", video(10.0)) == pytest.approx(2.8)  # the other model keeps its rate


def test_runway_prices_credits_at_a_cent_once_aleph2s_rate_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert adapter("runway").estimate_cost(sidecar(), "aleph2", video(10.0)) is None
    prices(monkeypatch, runway={"creditsPerSecond": 15})
    assert adapter("runway").estimate_cost(sidecar(), "aleph2", video(10.0)) == pytest.approx(1.5)


def test_crun_asks_its_free_estimate_and_prices_the_credits(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[httpx.Request] = []
    quote = {"code": 200, "message": "success", "data": {"estimated_credits": 30, "balance": 500, "affordable": True}}
    assert adapter("crun", calls, quote).estimate_cost(sidecar(), "runway/gen-4-aleph", video(5.0, "https://in.test/v.mp4")) is None
    assert calls == []  # no credit price: nothing asked
    prices(monkeypatch, crun={"creditUsd": 0.05})
    assert adapter("crun", calls, quote).estimate_cost(sidecar(), "runway/gen-4-aleph", video(5.0, "https://in.test/v.mp4")) == pytest.approx(1.5)
    assert [request.url.path for request in calls] == ["/api/v1/client/job/EstimateTask"]
    assert json.loads(calls[0].content)["input"]["video_url"] == "https://in.test/v.mp4"


def test_crun_says_when_its_estimate_is_not_affordable(monkeypatch: pytest.MonkeyPatch) -> None:
    prices(monkeypatch, crun={"creditUsd": 0.05})
    quote = {"code": 200, "message": "success", "data": {"estimated_credits": 30, "balance": 2, "affordable": False}}
    with pytest.raises(JobError) as raised:
        adapter("crun", [], quote).estimate_cost(sidecar(), "runway/gen-4-aleph", video(5.0, "https://in.test/v.mp4"))
    assert raised.value.code == "insufficient_credits"


def test_kie_apikley_and_replicate_from_their_price_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert adapter("kie").estimate_cost(sidecar(), "aleph", video(10.0)) is None
    assert adapter("replicate").estimate_cost(sidecar(), "runwayml/gen4-aleph", video(10.0)) == pytest.approx(0.90)
    prices(monkeypatch, kie={"perJob": 0.5}, apikley={"perSecond": 0.05}, replicate={"perJob": 1.2})
    assert adapter("kie").estimate_cost(sidecar(), "aleph", video(10.0)) == pytest.approx(0.5)
    assert adapter("apikley").estimate_cost(sidecar(), "aleph", video(10.0)) == pytest.approx(0.5)
    assert adapter("apikley").estimate_cost(sidecar(), "aleph", video(None)) is None  # per second, length unknown
    assert adapter("replicate").estimate_cost(sidecar(), "runwayml/gen4-aleph", video(10.0)) == pytest.approx(1.2)


def test_empty_budgets_are_none_and_reserve_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAILY_BUDGET_USD", "")
    monkeypatch.setenv("MONTHLY_BUDGET_USD", "")
    assert budget.periods() == []
    budget.reserve("job", "kie", None, table=object())  # no budget: no table is touched, no price needed


def test_a_budget_without_a_price_refuses_the_job_and_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONTHLY_BUDGET_USD", "100")
    with pytest.raises(JobError) as raised:
        budget.reserve("job", "kie", None, table=object())
    assert raised.value.code == "budget_exceeded"
    assert "provider `kie`" in raised.value.message and "ProviderPrices" in raised.value.message


def test_counters_are_kept_per_utc_day_and_month(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime

    monkeypatch.setenv("DAILY_BUDGET_USD", "50")
    monkeypatch.setenv("MONTHLY_BUDGET_USD", "900.5")
    keys = [(period.name, period.key, period.limit) for period in budget.periods(datetime(2026, 12, 1, 23, 59, tzinfo=UTC))]
    assert keys == [("daily", "budget#day#2026-12-01", 50.0), ("monthly", "budget#month#2026-12", 900.5)]


def test_a_price_per_job_reads_no_header_and_an_unreadable_one_is_no_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[tuple[int, int]] = []

    def unreadable(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return b"\x00" * length  # no container's header

    prices(monkeypatch, kie={"perJob": 0.5}, apikley={"perSecond": 0.05})
    assert adapter("kie").estimate_cost(sidecar(), "aleph", VideoInfo("mp4", 4096, unreadable)) == pytest.approx(0.5)
    assert reads == []
    assert adapter("apikley").estimate_cost(sidecar(), "aleph", VideoInfo("mp4", 4096, unreadable)) is None  # not an error: no estimate


def test_an_estimate_over_a_whole_budget_names_that_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    class EmptyTable:
        def get_item(self, **_: Any) -> dict[str, Any]:
            return {}

    monkeypatch.setenv("DAILY_BUDGET_USD", "50")
    monkeypatch.setenv("MONTHLY_BUDGET_USD", "5")
    with pytest.raises(JobError) as raised:
        budget.reserve("job", "runware", 8.4, table=EmptyTable())
    assert raised.value.code == "budget_exceeded"
    assert raised.value.message.startswith("the monthly budget is $5.00; $0.00 is spent or reserved in it already and this job's estimate is $8.40")
