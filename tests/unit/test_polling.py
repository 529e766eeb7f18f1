"""The per-job poll loop's decisions (aleph_pipeline.polling) with an in-memory job store and provider."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from aleph_pipeline import intake, polling
from aleph_pipeline.config import get_settings
from aleph_pipeline.jobs import Claim, Job
from aleph_pipeline.polling import PollMessage, PollResult, delay_before, handle_poll_message
from aleph_pipeline.providers import Outcome, ProviderError
from aleph_pipeline.sidecar import parse_sidecar

JOB_ID = "0123456789abcdef0123456789abcdef"
NOW = 1_800_000_000.0


@pytest.fixture(autouse=True)
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("POLL_QUEUE_URL", "http://127.0.0.1:9/000000000000/aleph-poll")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def no_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLL_JITTER", "0")
    get_settings.cache_clear()


# ------------------------------------------------------------------ the schedule


def test_the_delays_grow_by_half_from_six_seconds_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    no_jitter(monkeypatch)
    assert [delay_before(seq) for seq in range(1, 10)] == [6, 9, 14, 20, 30, 46, 60, 60, 60]
    assert delay_before(10_000) == 60  # no overflow however long the loop


def test_a_throttled_answer_waits_longer_and_never_past_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    no_jitter(monkeypatch)
    assert delay_before(1, throttled=True) == delay_before(3) == 14
    assert delay_before(8, throttled=True) == 60


def test_jitter_spreads_the_delays_within_its_fraction() -> None:
    rng = random.Random(7)  # noqa: S311 - jitter, not a secret: seeded for a repeatable test
    delays = {delay_before(2, rng=rng) for _ in range(200)}  # 9 s +/- 20 %
    assert len(delays) > 1
    assert min(delays) >= 7 and max(delays) <= 11
    assert {delay_before(20, rng=rng) for _ in range(200)} <= set(range(48, 61))


def test_the_cap_stays_within_what_sqs_can_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLL_MAX_DELAY_SECONDS", "900")
    no_jitter(monkeypatch)
    assert delay_before(100) == polling.MAX_SQS_DELAY_SECONDS


def test_messages_round_trip_and_bad_bodies_are_refused() -> None:
    assert PollMessage.from_body(PollMessage(JOB_ID, 3).to_body()) == PollMessage(JOB_ID, 3)
    for body in ("[]", '{"jobId": "x"}', '{"jobId": "x", "seq": 0}', '{"jobId": "x", "seq": true}', '{"jobId": 1, "seq": 1}', "not json"):
        with pytest.raises(ValueError):
            PollMessage.from_body(body)


# ------------------------------------------------------------------ one message


@dataclass
class FakeStore:
    """The two JobStore calls the loop makes, with advance_poll's condition."""

    item: dict[str, Any]
    advanced: list[int] = field(default_factory=list)

    def get(self, job_id: str) -> Job | None:
        return Job(dict(self.item)) if job_id == self.item["jobId"] else None

    def advance_poll(self, job_id: str, seq: int, message_id: str) -> bool:
        current = int(self.item.get("pollSeq", 0))
        same_message = current == seq and self.item.get("pollMessageId") == message_id
        if self.item["status"] != "SUBMITTED" or not (current == seq - 1 or same_message):
            return False
        self.item.update(pollSeq=seq, pollMessageId=message_id)
        self.advanced.append(seq)
        return True


@dataclass
class FakeProvider:
    answers: list[Outcome | ProviderError]
    polled: list[str] = field(default_factory=list)
    id: str = "polled"

    def poll(self, task_id: str) -> Outcome:
        self.polled.append(task_id)
        answer = self.answers.pop(0)
        if isinstance(answer, ProviderError):
            raise answer
        return answer


@dataclass(frozen=True)
class ThrottledOutcome(Outcome):
    throttled: bool = True


@pytest.fixture
def loop(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    store = FakeStore({"jobId": JOB_ID, "status": "SUBMITTED", "provider": "polled", "providerTaskId": "task-1", "deadlineAt": int(NOW) + 3600})
    provider = FakeProvider([])
    sent: list[tuple[PollMessage, int]] = []
    monkeypatch.setattr(polling, "JobStore", lambda: store)
    monkeypatch.setattr(polling, "get_provider", lambda provider_id: provider)
    monkeypatch.setattr(polling, "send", lambda message, delay: sent.append((message, delay)))
    no_jitter(monkeypatch)
    return {"store": store, "provider": provider, "sent": sent}


def handle(seq: int, message_id: str = "m", now: float = NOW) -> PollResult:
    return handle_poll_message(PollMessage(JOB_ID, seq).to_body(), message_id, now=now)


def test_a_running_task_takes_the_step_and_sends_the_next_with_a_longer_delay(loop: dict[str, Any]) -> None:
    loop["provider"].answers[:] = [Outcome("running"), Outcome("running")]
    assert handle(1, "m1") == PollResult.CONTINUED
    assert handle(2, "m2") == PollResult.CONTINUED
    assert loop["provider"].polled == ["task-1", "task-1"]
    assert loop["store"].advanced == [1, 2]
    assert loop["sent"] == [(PollMessage(JOB_ID, 2), 9), (PollMessage(JOB_ID, 3), 14)]


def test_a_stale_or_duplicated_seq_is_dropped_without_a_poll(loop: dict[str, Any]) -> None:
    loop["provider"].answers[:] = [Outcome("running")]
    assert handle(1, "m1") == PollResult.CONTINUED
    # A copy of step 1 sent twice (another message id), and a step from the future.
    for seq, message_id in ((1, "other"), (5, "m5")):
        assert handle(seq, message_id) == PollResult.STALE
    assert loop["provider"].polled == ["task-1"]
    assert loop["sent"] == [(PollMessage(JOB_ID, 2), 9)]


def test_two_copies_of_one_step_polled_together_send_one_next_message(loop: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    loop["provider"].answers[:] = [Outcome("running"), Outcome("running")]
    # Both copies read the job before either took the step (what concurrent deliveries see).
    snapshot = loop["store"].get(JOB_ID)
    monkeypatch.setattr(loop["store"], "get", lambda job_id: snapshot)
    assert {handle(1, "copy-a"), handle(1, "copy-b")} == {PollResult.CONTINUED, PollResult.STALE}
    assert len(loop["sent"]) == 1


def test_the_same_message_delivered_again_after_a_failed_send_continues_the_loop(loop: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    loop["provider"].answers[:] = [Outcome("running"), Outcome("running")]

    def unavailable(message: PollMessage, delay: int) -> None:
        raise ConnectionError("SQS unavailable")

    monkeypatch.setattr(polling, "send", unavailable)
    with pytest.raises(ConnectionError):
        handle(1, "m1")
    monkeypatch.setattr(polling, "send", lambda message, delay: loop["sent"].append((message, delay)))
    assert handle(1, "m1") == PollResult.CONTINUED  # SQS redelivers the same message id
    assert loop["sent"] == [(PollMessage(JOB_ID, 2), 9)]


def test_a_job_no_longer_submitted_ends_the_loop(loop: dict[str, Any]) -> None:
    loop["store"].item["status"] = "SUCCEEDED"
    assert handle(1) == PollResult.FINISHED
    assert loop["provider"].polled == [] and loop["sent"] == []


def test_a_finished_task_is_applied_once_and_ends_the_loop(loop: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    applied: list[Outcome] = []
    monkeypatch.setattr(polling, "apply_outcome", lambda store, job, provider, outcome: applied.append(outcome) or "succeeded")
    loop["provider"].answers[:] = [Outcome("succeeded", "task-1", ("https://results.example/a.mp4",))]
    assert handle(1) == PollResult.SETTLED
    assert [o.state for o in applied] == ["succeeded"]
    assert loop["sent"] == [] and loop["store"].advanced == []


def test_a_refused_result_url_keeps_polling(loop: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(polling, "apply_outcome", lambda store, job, provider, outcome: "rejected")
    loop["provider"].answers[:] = [Outcome("succeeded", "task-1", ("https://elsewhere.example/a.mp4",))]
    assert handle(1) == PollResult.CONTINUED


def test_the_loop_ends_at_the_deadline_and_its_last_delay_ends_on_it(loop: dict[str, Any]) -> None:
    deadline = loop["store"].item["deadlineAt"]
    loop["provider"].answers[:] = [Outcome("running"), Outcome("running")]
    assert handle(1, "m1", now=deadline - 4) == PollResult.CONTINUED
    assert loop["sent"] == [(PollMessage(JOB_ID, 2), 4)]  # not 9 s: the last poll comes at the deadline
    assert handle(2, "m2", now=deadline) == PollResult.DEADLINE
    assert len(loop["sent"]) == 1


def test_the_loop_ends_after_the_maximum_of_polls(loop: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLL_MAX_POLLS", "2")
    get_settings.cache_clear()
    loop["provider"].answers[:] = [Outcome("running"), Outcome("running")]
    assert handle(1, "m1") == PollResult.CONTINUED
    assert handle(2, "m2") == PollResult.MAX_POLLS
    assert [message.seq for message, _ in loop["sent"]] == [2]
    assert len(loop["provider"].polled) == 2


def test_throttled_answers_and_failed_polls_back_off_as_running(loop: dict[str, Any]) -> None:
    loop["provider"].answers[:] = [
        ThrottledOutcome("running"),
        ProviderError("retryable", "429", "rate limited", 429),
        ProviderError("retryable", "connect_error", "could not reach the provider"),
    ]
    assert [handle(seq, f"m{seq}") for seq in (1, 2, 3)] == [PollResult.CONTINUED] * 3
    # Before poll 2: as if poll 4 (throttled); before poll 3: as if poll 5 (a 429); before poll 4: on schedule.
    assert [delay for _, delay in loop["sent"]] == [delay_before(4), delay_before(5), delay_before(4)] == [20, 30, 20]


# ------------------------------------------------------------------ intake starts the loop


@dataclass
class SubmittingProvider:
    webhooks: bool
    id: str = "polled"
    idempotent_submit = False

    def submit(self, request: Any) -> str:
        return "task-1"

    def estimate_cost(self, sidecar: Any, model: str, video: Any) -> float | None:
        return None


@dataclass
class ClaimingStore:
    submitted: list[str] = field(default_factory=list)

    def claim_submission(self, job_id: str, deadline_at: int, details: dict[str, Any] | None = None) -> Claim:
        return Claim("claim-1", "token")

    def mark_submitted(self, job_id: str, task_id: str) -> bool:
        self.submitted.append(task_id)
        return True


@pytest.mark.parametrize(("webhooks", "started"), [(False, [JOB_ID]), (True, [])])
def test_intake_starts_the_loop_after_a_submit_to_a_provider_without_webhooks(monkeypatch: pytest.MonkeyPatch, webhooks: bool, started: list[str]) -> None:
    starts: list[str] = []
    monkeypatch.setattr(polling, "start", lambda job_id: starts.append(job_id) or True)
    monkeypatch.setattr(intake.pacing, "hold_for_slot", lambda *args, **kwargs: False)  # an unpaced provider
    sidecar, _document = parse_sidecar(b'{"prompt": "make it rain"}')
    plan = intake.SubmitPlan(SubmittingProvider(webhooks), "aleph", sidecar, "{}", intake.VideoSource("mp4", url="https://videos.example/a.mp4"), (), ())  # type: ignore[arg-type]
    store = ClaimingStore()
    intake._submit_once(store, JOB_ID, plan, True, None)  # type: ignore[arg-type]
    assert store.submitted == ["task-1"]
    assert starts == started


def test_a_loop_that_cannot_start_leaves_the_job_to_the_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLL_QUEUE_URL", "")
    get_settings.cache_clear()
    assert polling.start(JOB_ID) is False  # logged, not raised: the submit is recorded all the same
