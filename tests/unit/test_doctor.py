"""Each ``aleph doctor`` check's verdict, from fakes (the whole command runs in tests/e2e/test_doctor.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from aleph_cli import doctor
from aleph_pipeline.providers import PROVIDER_IDS
from aleph_pipeline.providers.kie import KieProtocol
from aleph_pipeline.providers.runware import RunwareProtocol

NOW = 1_800_000_000.0


def verdicts(checks: list[doctor.Check]) -> dict[str, str]:
    return {check.name: check.verdict for check in checks}


def test_keys_every_provider_named_and_the_default_verified_without_printing_them() -> None:
    asked: list[str] = []

    def verify(provider: str, key: str) -> str | None:
        asked.append(provider)
        return None if key.startswith("good") else f"{provider} refused the API key"

    checks = doctor.check_keys({"kie": "good-1", "runware": {"apiKey": "bad-2"}, "crun": ""}, "kie", verify, PROVIDER_IDS)
    assert verdicts(checks) == {"key kie": "ok", "key runware": "fix"}  # crun's empty key: not a provider the stack uses
    assert sorted(asked) == ["kie", "runware"]
    assert not any("good-1" in check.line or "bad-2" in check.line for check in checks)


def test_keys_the_default_provider_without_a_key_and_an_unknown_id_need_fixing() -> None:
    checks = doctor.check_keys({"kei": "k"}, "apikley", lambda provider, key: None, PROVIDER_IDS)
    assert verdicts(checks) == {"key apikley": "fix", "key kei": "fix"}
    assert "DefaultProvider" in checks[0].detail and "not a provider the pipeline knows" in checks[1].detail


def test_keys_every_provider_of_the_chain_needs_a_key() -> None:
    checks = doctor.check_keys({"kie": "k", "runware": "r"}, "kie", lambda provider, key: None, PROVIDER_IDS, ("kie", "apikley", "runware"))
    assert verdicts(checks) == {"key apikley": "fix", "key kie": "ok", "key runware": "ok"}
    assert checks[0].detail == "the provider secret has no key for `apikley` (in the ProviderChain): add one"


def test_callback_api_ok_only_on_404() -> None:
    def refused(url: str) -> int:
        raise httpx.ConnectError("refused")

    assert doctor.check_callback_api("http://api", lambda url: 404).verdict == "ok"
    assert "answered 502" in doctor.check_callback_api("http://api", lambda url: 502).detail
    assert "did not answer" in doctor.check_callback_api("http://api", refused).detail


def test_schedule_enabled_disabled_missing_or_local() -> None:
    assert doctor.check_schedules(("sweep",), lambda name: "ENABLED").verdict == "ok"
    disabled = doctor.check_schedules(("sweep",), lambda name: "DISABLED")
    assert disabled.verdict == "fix" and "sweep is disabled" in disabled.detail
    assert doctor.check_schedules((), lambda name: "ENABLED").verdict == "fix"
    local = doctor.check_schedules(None, lambda name: pytest.fail("nothing to ask locally"))
    assert local.verdict == "skipped" and "not checked locally" in local.line


def test_dlqs_empty_or_not() -> None:
    depths = {"u-submit": 0, "u-poll": 2}
    checks = doctor.check_dlqs({"submit": "u-submit", "poll": "u-poll"}, depths.__getitem__)
    assert verdicts(checks) == {"submit DLQ": "ok", "poll DLQ": "fix"}
    assert "2 message(s) in u-poll" in checks[1].detail


def test_stuck_jobs_past_each_grace() -> None:
    jobs = {
        "SUBMITTED": [{"jobId": "s1", "updatedAt": doctor.iso(NOW - 3600)}],
        "SUCCEEDED": [],
        # One RECEIVED job past its pairing deadline (and the margin), one still within it.
        "RECEIVED": [{"jobId": "r1", "pairingDeadline": NOW - doctor.MARGIN_SECONDS - 1}, {"jobId": "r2", "pairingDeadline": NOW + 10}],
    }
    asked: dict[str, str] = {}

    def stale(state: str, before: str) -> list[dict[str, Any]]:
        asked[state] = before
        return jobs[state]

    checks = doctor.check_stuck(stale, NOW, callback_grace_seconds=600, finalize_grace_seconds=1800)
    assert verdicts(checks) == {"SUBMITTED jobs": "fix", "SUCCEEDED jobs": "ok", "RECEIVED jobs": "fix"}
    assert asked["SUBMITTED"] == doctor.iso(NOW - 600 - doctor.MARGIN_SECONDS)
    assert asked["SUCCEEDED"] == doctor.iso(NOW - 1800 - doctor.MARGIN_SECONDS)
    received = next(check for check in checks if check.name == "RECEIVED jobs")
    assert "1 stuck" in received.detail and "r1" in received.detail and "r2" not in received.detail


def test_local_target_reads_stack_json(tmp_path: Path) -> None:
    info = {
        "secret_id": "aleph/provider-keys",
        "api_url": "http://127.0.0.1:1",
        "submit_dlq_url": "q1",
        "finalize_dlq_url": "q2",
        "notify_dlq_url": "q3",
        "poll_dlq_url": "q4",
        "handler_env": {"DEFAULT_PROVIDER": "runware", "PROVIDER_CHAIN": "runware, kie", "PROVIDER_ENDPOINTS": json.dumps({"kie": "http://sim/kie"})},
        "function_env": {"reconcile": {"CALLBACK_GRACE_SECONDS": "30"}},
    }
    (tmp_path / "stack.json").write_text(json.dumps(info))
    target = doctor.local_target(tmp_path / "stack.json")
    assert target.default_provider == "runware" and target.callback_grace_seconds == 30 and target.schedules is None
    assert dict(target.dlq_urls) == {"submit": "q1", "finalize": "q2", "notify": "q3", "poll": "q4"}
    assert target.provider_endpoints == {"kie": "http://sim/kie"}
    assert target.provider_chain == ("runware", "kie")


def provider(constructor: Any, handler: Any) -> Any:
    return constructor(
        id="kie",
        base_url="https://provider.test",
        api_key=lambda: "the-key",
        http=httpx.Client(transport=httpx.MockTransport(handler)),
        models=("aleph",),
        default_result_hosts=(),
    )


def test_verify_key_reads_kies_code_in_a_200_answer() -> None:
    def answer(code: int) -> Any:
        def handler(request: httpx.Request) -> httpx.Response:
            assert request.url.path == "/api/v1/chat/credit" and request.headers["Authorization"] == "Bearer the-key"
            return httpx.Response(200, json={"code": code, "msg": "", "data": 5})

        return handler

    assert provider(KieProtocol, answer(200)).verify_key() is None
    refused = provider(KieProtocol, answer(401)).verify_key()
    assert refused is not None and "refused the API key" in refused and "the-key" not in refused


def test_verify_key_sends_runwares_authentication_task_and_reports_no_connection() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content) == [{"taskType": "authentication", "apiKey": "the-key"}]
        return httpx.Response(200, json={"data": [{"taskType": "authentication"}]})

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    assert provider(RunwareProtocol, handler).verify_key() is None
    problem = provider(RunwareProtocol, unreachable).verify_key()
    assert problem is not None and "could not ask" in problem
