"""Failing over along a provider chain: which answers say "not now, and not you", which chain a
job has, and when a refusal moves the job on (never after a send that may have been taken)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from aleph_pipeline import intake
from aleph_pipeline.config import get_settings
from aleph_pipeline.errors import JobError, TransientError
from aleph_pipeline.jobs import Claim, Job
from aleph_pipeline.providers import ProviderError, build_provider
from aleph_pipeline.sidecar import parse_sidecar
from aleph_pipeline.status import describe

JOB_ID = "c" * 32


def adapter(provider_id: str) -> Any:
    return build_provider(provider_id, http=httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(500))), api_key=lambda: "key")


@pytest.mark.parametrize(
    ("provider_id", "status", "body", "not_you"),
    [
        # kie and apikley answer maintenance and credits with HTTP 200 and the code in the body.
        ("kie", 200, {"code": 455, "msg": "system maintenance"}, True),
        ("apikley", 200, {"code": 402, "msg": "Insufficient credits"}, True),
        ("kie", 429, {"code": 429, "msg": "Rate limited"}, False),
        ("kie", 200, {"code": 422, "msg": "bad prompt"}, False),
        ("crun", 200, {"code": 505, "message": "feature disabled"}, True),
        ("crun", 455, {"code": 455, "message": "maintenance"}, True),
        ("crun", 402, {"code": 402, "message": "Insufficient Credits"}, True),
        ("crun", 200, {"code": 422, "message": "Missing Params"}, False),
        ("runware", 402, {"errors": [{"code": "insufficientCredits", "message": "top up"}]}, True),
        ("runware", 400, {"errors": [{"code": "invalidPositivePrompt", "message": "no"}]}, False),
        ("replicate", 402, {"title": "Insufficient credit", "detail": "buy credit"}, True),
        ("replicate", 422, {"title": "Input validation failed", "detail": "no"}, False),
    ],
)
def test_each_adapter_says_which_refusals_are_not_now_and_not_you(provider_id: str, status: int, body: Any, not_you: bool) -> None:
    error = adapter(provider_id).submit_failure(status, body)
    assert error.kind != "ambiguous"
    assert error.not_you is not_you


def test_an_answer_that_may_follow_a_created_task_is_never_not_you() -> None:
    # A gateway's 5xx may come after the task was made: ambiguous, whatever the adapter says.
    assert adapter("kie").submit_failure(502, None).kind == "ambiguous"
    assert not adapter("kie").submit_failure(502, None).not_you
    assert not ProviderError("ambiguous", "455", "maintenance?", 200, not_you=True).not_you


def sidecar_of(document: dict[str, Any]) -> Any:
    return parse_sidecar(json.dumps(document).encode())[0]


@pytest.fixture
def stack_chain(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("PROVIDER_CHAIN", " kie, apikley ,runware")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_the_chain_is_the_sidecars_then_the_stacks_unless_the_sidecar_names_its_provider(stack_chain: None) -> None:
    assert intake.provider_chain(sidecar_of({"prompt": "x"})) == ("kie", "apikley", "runware")
    assert intake.provider_chain(sidecar_of({"prompt": "x", "providers": ["runware", "kie"]})) == ("runware", "kie")
    assert intake.provider_chain(sidecar_of({"prompt": "x", "provider": "crun"})) is None


def test_no_stack_chain_means_one_provider() -> None:
    get_settings.cache_clear()
    assert intake.provider_chain(sidecar_of({"prompt": "x"})) is None


def test_a_sidecar_with_both_provider_and_providers_is_refused_naming_both() -> None:
    with pytest.raises(JobError) as caught:
        sidecar_of({"prompt": "x", "provider": "kie", "providers": ["apikley"]})
    assert caught.value.code == "invalid_sidecar"
    assert "`provider` or `providers`" in caught.value.message
    with pytest.raises(JobError, match="more than once"):
        sidecar_of({"prompt": "x", "providers": ["kie", "kie"]})


def job(**item: Any) -> Job:
    return Job({"jobId": JOB_ID, "status": "RECEIVED", **item})


def test_the_job_starts_with_the_first_provider_that_honours_every_option() -> None:
    sidecar = sidecar_of({"prompt": "x", "numberResults": 2})  # Runware only, of these
    candidates = intake._chain_candidates(("kie", "apikley", "runware"), sidecar, job())
    chosen = intake._honouring(candidates, sidecar, None, job())
    assert [(provider.id, model) for provider, model in chosen] == [("runware", "runway:aleph@2.0")]


def test_providers_that_refused_the_job_are_left_out_and_a_model_belongs_to_one_provider() -> None:
    sidecar = sidecar_of({"prompt": "x", "model": "runway:2@1"})
    tried = job(providersTried=[{"provider": "kie", "model": "aleph", "reason": "kie: maintenance", "code": "provider_unavailable"}])
    candidates = intake._chain_candidates(("kie", "apikley", "runware"), sidecar, tried)
    assert [(provider.id, model) for provider, model in candidates] == [("apikley", "aleph"), ("runware", "runway:2@1")]
    with pytest.raises(JobError) as caught:
        intake._chain_candidates(("kie", "apikley"), sidecar, job())
    assert caught.value.code == "unknown_model"


def test_a_chain_every_provider_refused_fails_with_the_last_refusals_code_naming_each() -> None:
    tried = job(
        providersTried=[
            {"provider": "kie", "model": "aleph", "reason": "kie: system maintenance", "code": "provider_unavailable", "providerCode": "455"},
            {"provider": "apikley", "model": "aleph", "reason": "apikley: Insufficient credits", "code": "provider_rejected", "providerCode": "402"},
        ]
    )
    sidecar = sidecar_of({"prompt": "x", "watermark": "team"})
    candidates = intake._chain_candidates(("kie", "apikley", "runware"), sidecar, tried)
    with pytest.raises(JobError) as caught:
        intake._honouring(candidates, sidecar, None, tried)
    assert caught.value.code == "provider_rejected"
    assert caught.value.details == {"providerCode": "402"}
    for answer in ("kie: kie: system maintenance", "apikley: apikley: Insufficient credits", "runware: `watermark` cannot be honoured"):
        assert answer in caught.value.message


@dataclass
class RecordingStore:
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def move_on(self, job_id: str, claim_id: str, provider: str, model: str, refusal: JobError) -> bool:
        self.calls.append(("move_on", (provider, model, refusal.code)))
        return True

    def release_claim(self, job_id: str, claim_id: str, refusal: str, *, may_have_reached: bool = False) -> None:
        self.calls.append(("release_claim", may_have_reached))

    def note_unanswered(self, job_id: str, claim_id: str, reason: str) -> bool:
        self.calls.append(("note_unanswered", reason))
        return True


def plan(chain: tuple[str, ...] | None) -> Any:
    video = intake.VideoSource("mp4", url="https://v.example/a.mp4")
    return intake.SubmitPlan(adapter("kie"), "aleph", sidecar_of({"prompt": "x"}), "{}", video, (), (), chain)


MAINTENANCE = ProviderError("retryable", "455", "kie: system maintenance", 200, not_you=True)


def test_a_not_you_refusal_moves_a_chained_job_to_the_next_provider() -> None:
    store = RecordingStore()
    moved = intake._after_refusal(store, JOB_ID, Claim("c1", "t"), MAINTENANCE, True, idempotent=False, plan=plan(("kie", "apikley")))  # type: ignore[arg-type]
    assert moved is True
    assert store.calls == [("move_on", ("kie", "aleph", "provider_unavailable"))]


def test_without_a_chain_maintenance_is_retried_on_the_same_provider() -> None:
    store = RecordingStore()
    with pytest.raises(TransientError):
        intake._after_refusal(store, JOB_ID, Claim("c1", "t"), MAINTENANCE, True, idempotent=False, plan=plan(None))  # type: ignore[arg-type]
    assert store.calls == [("release_claim", False)]


def test_a_job_whose_earlier_request_may_have_made_a_task_never_moves() -> None:
    store = RecordingStore()
    claim = Claim("c1", "t", sent_before="runware did not answer: ReadTimeout")
    credits = ProviderError("refused", "402", "kie: Insufficient credits", 200, not_you=True)
    moved = intake._after_refusal(store, JOB_ID, claim, credits, True, idempotent=False, plan=plan(("kie", "apikley")))  # type: ignore[arg-type]
    assert moved is False
    assert store.calls == [("note_unanswered", "runware did not answer: ReadTimeout")]


def test_an_ambiguous_answer_never_moves() -> None:
    store = RecordingStore()
    ambiguous = ProviderError("ambiguous", "502", "kie: HTTP 502 (the request may have been taken)", 502)
    moved = intake._after_refusal(store, JOB_ID, Claim("c1", "t"), ambiguous, True, idempotent=False, plan=plan(("kie", "apikley")))  # type: ignore[arg-type]
    assert moved is False
    assert [name for name, _ in store.calls] == ["note_unanswered"]


TRIED_KIE = {"provider": "kie", "model": "aleph", "reason": "kie: system maintenance", "code": "provider_unavailable", "at": "2026-01-01T00:00:01.000Z"}


def test_the_status_api_shows_the_providers_tried_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("aleph_pipeline.status.storage.presign_get", lambda *args: "https://signed.example/x")
    tried = job(
        provider="apikley",
        createdAt="2026-01-01T00:00:00.000Z",
        providersTried=[TRIED_KIE],
    )
    shown = describe(tried)
    assert shown["providersTried"] == [TRIED_KIE]
    assert shown["waitingFor"] is not None and "kie did not take it" in shown["waitingFor"]
