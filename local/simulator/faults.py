"""Fault injection rules (``/_sim/faults``), kept in one place so new faults are one line each.

A rule names a fault and optionally narrows it by provider and prompt substring; ``count``
limits how many requests/tasks it hits and ``rate`` makes it probabilistic. Rates draw from one
``random.Random`` seeded by the ``seed`` setting, re-seeded whenever the rules are replaced, so
the same seed, rules and request sequence always give the same outcome.

Whether a fault leaves a task behind is what decides whether a client may retry the submit:

=========================  =============  ================================================
fault                      task created?  what the client sees
=========================  =============  ================================================
submit_429                 no             429, the provider's rate-limit body
submit_500                 no             500, the provider's error body
insufficient_credits       no             402 (kie: HTTP 200, code 402 in the body)
maintenance                no             kie/apikley: HTTP 200, code 455 in the body; crun: 455
feature_disabled           no             crun: 505 (feature disabled)
submit_5xx_after_create    YES            502 / 504 gateway HTML page, or a 500 JSON body
reset_after_read           YES            the connection reset, no HTTP answer at all
read_timeout               YES            the answer held past the client's read timeout
every other fault          YES            an accepted answer; the fault is in the task
=========================  =============  ================================================

Every task the simulator creates is listed by ``GET /_sim/tasks`` with the faults it met
(``faults``) and what its submit was answered (``submit_answer``).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, replace
from typing import Any

from local.simulator.limits import RateLimits

# Faults decided when a submit request arrives, before any task exists: they refuse the request
# and create NO task, so a retry is safe.
SUBMIT_FAULTS: dict[str, tuple[int, int, str]] = {
    # name: (HTTP status, body code, msg)
    "submit_429": (429, 429, "Rate limited: too many requests, please slow down"),
    "submit_500": (500, 500, "Server Error - An unexpected error occurred while processing the request"),
    # kie answers credit problems with HTTP 200 and the code in the body.
    "insufficient_credits": (200, 402, "Insufficient credits: the account does not have enough credits"),
    # kie answers maintenance with HTTP 200 and the code in the body too.
    "maintenance": (200, 455, "The service is currently unavailable due to system maintenance, please try again later"),
    "feature_disabled": (200, 505, "The feature is currently disabled"),
}
# Submit faults only some protocols have an answer of their own for: the others never meet them.
SUBMIT_FAULT_PROVIDERS: dict[str, frozenset[str]] = {
    "maintenance": frozenset({"kie", "apikley", "crun"}),
    "feature_disabled": frozenset({"crun"}),
}

# Faults decided once per created task that spoil its submit answer: the task EXISTS, runs and
# calls back as usual, but the answer does not say so. A client that retries pays twice.
ANSWER_FAULTS: dict[str, str] = {
    "read_timeout": "accepts the task, then withholds the submit answer for delay_seconds (rule) or submit_hold_seconds (config)",
    "submit_5xx_after_create": (
        "creates the task, then answers like a failing gateway: 502 Bad Gateway (HTML), 504 Gateway Time-out (HTML) and a 500 "
        "in the provider's own JSON error shape in turn (http_status in the rule picks one)"
    ),
    "reset_after_read": "reads the request, creates the task, then resets the connection without any HTTP answer",
}
# The answers submit_5xx_after_create gives in turn: a load balancer's two pages, then the provider's own 500.
GATEWAY_STATUSES = (502, 504, 500)

# Faults decided once per created task: they change how the task ends or calls back.
TASK_FAULTS: dict[str, str] = {
    "cancelled": "the task ends CANCELLED (Runway); other providers ignore it",
    "bad_signature": "Replicate: the webhook is signed with a secret that is not the account's",
    "generation_failure": "the task fails; failure callback with code 400 (crun: status failed, result.code 501) and a moderator message",
    "drop_callback": "never calls back; polling still works",
    "duplicate_callback": "sends the callback twice",
    "delay_callback": "waits delay_seconds (rule or config) before calling back",
    "expired_result": "result files answer 404 and record-info shows expireFlag 1",
    "foreign_result_host": "callback result URLs point at https://169.254.169.254/latest/meta-data",
    # Out of order: the callback outruns the submit answer, or a stale one follows the final one.
    "early_callback": "the task runs at once and its callback is sent before the submit answer, which waits for it",
    "stale_callback": "after the final callback a stale one follows: kie/apikley a failure (code 500), crun a running task, Runware a processing item",
    "wrong_container": (
        "the result is in another container than asked, under the asked-for name: Runware MP4 for WEBM or MOV (WebM for MP4), "
        "kie/apikley/crun WebM for their MP4"
    ),
}

KNOWN_FAULTS = tuple(SUBMIT_FAULTS) + tuple(ANSWER_FAULTS) + tuple(TASK_FAULTS)
DEFAULT_GENERATION_FAILURE_MSG = "Your prompt was caught by our AI moderator. Please adjust it and try again!"
FOREIGN_RESULT_URL = "https://169.254.169.254/latest/meta-data"


@dataclass
class FaultRule:
    fault: str
    provider: str | None = None
    match_prompt: str | None = None
    count: int | None = None  # remaining applications; None = unlimited
    rate: float | None = None
    delay_seconds: float | None = None  # delay_callback: the callback's delay; read_timeout: how long the answer is held
    msg: str | None = None  # generation_failure only: the failure message
    http_status: int | None = None  # submit_5xx_after_create only: always this answer (else GATEWAY_STATUSES in turn)
    applied: int = 0

    @classmethod
    def parse(cls, raw: Any, index: int) -> FaultRule:
        where = f"rule {index}"
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must be an object")
        unknown = set(raw) - {"fault", "provider", "match_prompt", "count", "rate", "delay_seconds", "msg", "http_status"}
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        fault = raw.get("fault")
        if fault not in KNOWN_FAULTS:
            raise ValueError(f"{where}: fault must be one of {', '.join(KNOWN_FAULTS)}")
        for name in ("provider", "match_prompt", "msg"):
            if raw.get(name) is not None and not isinstance(raw[name], str):
                raise ValueError(f"{where}: {name} must be a string")
        count = raw.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise ValueError(f"{where}: count must be a non-negative integer")
        rate = raw.get("rate")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1):
            raise ValueError(f"{where}: rate must be a number between 0 and 1")
        delay = raw.get("delay_seconds")
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0):
            raise ValueError(f"{where}: delay_seconds must be a non-negative number")
        status = raw.get("http_status")
        if status is not None and (fault != "submit_5xx_after_create" or status not in GATEWAY_STATUSES):
            raise ValueError(f"{where}: http_status is for submit_5xx_after_create only, one of {', '.join(map(str, GATEWAY_STATUSES))}")
        return cls(
            fault=fault,
            provider=raw.get("provider"),
            match_prompt=raw.get("match_prompt"),
            count=count,
            rate=None if rate is None else float(rate),
            delay_seconds=None if delay is None else float(delay),
            msg=raw.get("msg"),
            http_status=status,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "fault": self.fault,
            "provider": self.provider,
            "match_prompt": self.match_prompt,
            "count": self.count,
            "rate": self.rate,
            "delay_seconds": self.delay_seconds,
            "msg": self.msg,
            "http_status": self.http_status,
            "applied": self.applied,
        }


class FaultBook:
    """The active rules. ``pick_*`` consume ``count`` only when a rule actually applies."""

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._seed = seed
        self._rng = random.Random(seed)
        self.limits = RateLimits()

    def set_rules(self, raw_rules: Any) -> None:
        if isinstance(raw_rules, dict):
            raw_rules = [raw_rules]
        if not isinstance(raw_rules, list):
            raise ValueError("faults must be a JSON list of rules")
        rules = [FaultRule.parse(raw, i) for i, raw in enumerate(raw_rules)]
        with self._lock:
            self._rules = rules
            self._rng = random.Random(self._seed)

    def clear(self) -> None:
        self.set_rules([])

    def reseed(self, seed: int | None) -> None:
        with self._lock:
            self._seed = seed
            self._rng = random.Random(seed)

    def to_json(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.to_json() for rule in self._rules]

    def _take(self, rule: FaultRule, provider: str, prompt: str | None) -> bool:
        """Whether ``rule`` applies now; caller holds the lock."""
        if rule.count is not None and rule.count <= 0:
            return False
        if rule.provider is not None and rule.provider != provider:
            return False
        if rule.match_prompt is not None and (prompt is None or rule.match_prompt not in prompt):
            return False
        if rule.rate is not None and self._rng.random() >= rule.rate:
            return False
        if rule.count is not None:
            rule.count -= 1
        rule.applied += 1
        return True

    def pick_submit(self, provider: str, prompt: str | None) -> FaultRule | None:
        """The first submit-time fault that applies to this request, if any; then the
        provider's rate limit (``limits``), answered as its own 429."""
        with self._lock:
            for rule in self._rules:
                if provider not in SUBMIT_FAULT_PROVIDERS.get(rule.fault, (provider,)):
                    continue
                if rule.fault in SUBMIT_FAULTS and self._take(rule, provider, prompt):
                    return rule
        if not self.limits.admit(provider):
            return FaultRule("submit_429", provider=provider, applied=1)
        return None

    def pick_task(self, provider: str, prompt: str | None) -> dict[str, FaultRule]:
        """Every fault that applies to a new task (answer and task faults), by fault name (first
        rule wins). A ``submit_5xx_after_create`` rule comes back as a copy carrying the status
        this task's answer gets."""
        chosen: dict[str, FaultRule] = {}
        with self._lock:
            for rule in self._rules:
                if (rule.fault in TASK_FAULTS or rule.fault in ANSWER_FAULTS) and rule.fault not in chosen and self._take(rule, provider, prompt):
                    turn = GATEWAY_STATUSES[(rule.applied - 1) % len(GATEWAY_STATUSES)]
                    gateway = rule.fault == "submit_5xx_after_create" and rule.http_status is None
                    chosen[rule.fault] = replace(rule, http_status=turn) if gateway else rule
        return chosen
