"""Jobs in DynamoDB and their state machine: the only code that changes a job's state.

States move forward only, each move a conditional write:
``RECEIVED -> SUBMITTED -> SUCCEEDED -> COMPLETED``, and ``FAILED`` from any non-terminal state.
A submission is claimed with its own conditional write before the provider is called, so a job
is sent to a provider at most once however often its events repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from typing import Any

from . import telemetry
from .config import get_settings
from .errors import JobError
from .log import logger


class JobState(StrEnum):
    RECEIVED = "RECEIVED"
    SUBMITTED = "SUBMITTED"
    SUCCEEDED = "SUCCEEDED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


# Which states each state may be entered from. RECEIVED -> SUCCEEDED covers a provider whose
# callback outruns our own record of the submission.
ENTERED_FROM: dict[JobState, frozenset[JobState]] = {
    JobState.SUBMITTED: frozenset({JobState.RECEIVED}),
    JobState.SUCCEEDED: frozenset({JobState.RECEIVED, JobState.SUBMITTED}),
    JobState.COMPLETED: frozenset({JobState.SUCCEEDED}),
    JobState.FAILED: frozenset({JobState.RECEIVED, JobState.SUBMITTED, JobState.SUCCEEDED}),
}
TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED})
STATUS_INDEX = "by-status"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Claim:
    """The right to call the provider for a job, and the callback token to send."""

    claim_id: str
    token: str
    # Why an earlier request for this job may have reached the provider unanswered (a reset, a
    # 5xx), if one did: the job may have a task already, so no later answer may fail it as "not taken".
    sent_before: str | None = None


@dataclass(frozen=True)
class Job:
    """A read-only view of a job item."""

    item: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.item["jobId"])

    @property
    def state(self) -> JobState:
        return JobState(self.item["status"])

    @property
    def provider(self) -> str | None:
        return self.item.get("provider")

    @property
    def provider_task_id(self) -> str | None:
        return self.item.get("providerTaskId")

    @property
    def output_prefix(self) -> str:
        return str(self.item["outputPrefix"])

    @property
    def sidecar_document(self) -> dict[str, Any] | None:
        raw = self.item.get("sidecarJson")
        return json.loads(raw) if isinstance(raw, str) else None

    @property
    def expected_results(self) -> int:
        """How many results the job waits for (the sidecar's ``numberResults``, recorded at intake)."""
        return int(self.item.get("expectedResults", 1))

    @property
    def poll_seq(self) -> int:
        """The last step of the job's poll loop taken (0 before the first; see ``JobStore.advance_poll``)."""
        return int(self.item.get("pollSeq", 0))

    @property
    def sent_before(self) -> str | None:
        """Why an earlier request may have reached the provider unanswered (see ``JobStore.release_claim``)."""
        sent = self.item.get("ambiguousSend")
        return str(sent["reason"]) if isinstance(sent, dict) else None

    @property
    def submission_claimed(self) -> bool:
        return "submission" in self.item

    @property
    def providers_tried(self) -> list[dict[str, Any]]:
        """The providers of the job's chain that refused it, in order, each with why it moved on
        (``{provider, model, reason, code, providerCode, at}``; see ``JobStore.move_on``)."""
        tried: list[dict[str, Any]] = _plain(self.item.get("providersTried") or [])
        return [entry for entry in tried if isinstance(entry, dict)]

    def reached(self, state: JobState) -> bool:
        """Whether the job's history passes through ``state``."""
        return any(isinstance(entry, dict) and entry.get("state") == state.value for entry in self.item.get("history", ()))

    @property
    def submit_unanswered(self) -> bool:
        """The submit may have reached the provider but its answer never came (see ``note_unanswered``)."""
        submission = self.item.get("submission")
        return isinstance(submission, dict) and "unanswered" in submission

    @property
    def waiting_for(self) -> str | None:
        """Why a RECEIVED job waits, in words for the status API and the CLI (None when it does not)."""
        if self.state != JobState.RECEIVED:
            return None
        if self.submit_unanswered:
            return "awaiting the provider after an unanswered submit (it may have taken the task; no second task is ever made)"
        if self.submission_claimed:
            return "submitting to the provider"
        if isinstance(self.item.get("paceSlot"), dict) and float(self.item["paceSlot"]["at"]) > time.time():
            after = f"; retrying: the provider did not take the request ({self.item['lastRefusal']})" if self.item.get("lastRefusal") else ""
            return f"waiting for a provider slot (at {datetime.fromtimestamp(float(self.item['paceSlot']['at']), UTC):%H:%M:%S} UTC){after}"
        if isinstance(self.item.get("flightWait"), dict):
            limit = self.item["flightWait"].get("limit")
            return f"waiting for a provider slot ({limit} of {limit} tasks in flight)"
        if self.item.get("providersTried") and not self.item.get("lastRefusal"):
            last = self.providers_tried[-1]
            return f"moving to the next provider of its chain: {last.get('provider')} did not take it ({last.get('reason')})"
        if self.item.get("lastRefusal"):
            return f"retrying: the provider did not take the request ({self.item['lastRefusal']})"
        if self.item.get("awaitingVideo"):
            return f"awaiting the video `{self.item['awaitingVideo']}`"
        return "reading the sidecar"

    def token_matches(self, token: str | None) -> bool:
        expected = self.item.get("tokenHash")
        if not token or not isinstance(expected, str):
            return False
        return hmac.compare_digest(hash_token(token), expected)

    def to_manifest(self) -> dict[str, Any]:
        """Plain JSON types (DynamoDB numbers come back as Decimal)."""
        plain: dict[str, Any] = _plain(self.item)
        return plain


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {key: _plain(inner) for key, inner in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(inner) for inner in value]
    return value


def _dynamo(value: Any) -> Any:
    """Python values to what boto3's DynamoDB resource accepts (floats as Decimal)."""
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {key: _dynamo(inner) for key, inner in value.items() if inner is not None}
    if isinstance(value, list | tuple):
        return [_dynamo(inner) for inner in value]
    return value


@lru_cache(maxsize=1)
def _table() -> Any:
    import boto3

    return boto3.resource("dynamodb").Table(get_settings().jobs_table_name)


def _conditional_failed(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    return isinstance(response, dict) and response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def conditional_update(table: Any, **update: Any) -> dict[str, Any] | None:
    """One conditional ``update_item``: the attributes it answers (what ``ReturnValues`` asks for;
    empty when nothing is asked), or None when its condition does not hold (not an error)."""
    try:
        answer = table.update_item(**update)
    except Exception as exc:
        if _conditional_failed(exc):
            return None
        raise
    attributes: dict[str, Any] = answer.get("Attributes", {}) if isinstance(answer, dict) else {}
    return attributes


class JobStore:
    """Reads and conditional writes of job items. All state changes go through ``_move``."""

    def __init__(self, table: Any | None = None) -> None:
        self.table = table if table is not None else _table()

    # Reads

    def get(self, job_id: str) -> Job | None:
        item = self.table.get_item(Key={"jobId": job_id}, ConsistentRead=True).get("Item")
        return Job(item) if item and "status" in item else None

    def hold_back(self, job_id: str, reason: dict[str, Any]) -> bool:
        """The RECEIVED, unclaimed job waits for its provider (``paceSlot``, ``flightWait``: the
        attributes of ``reason``). Its video is here, so the pairing deadline gives way to the
        job's deadline (the one its first claim would set). False when the job moved on meanwhile
        (failed, or claimed elsewhere)."""
        names, values, sets = _set_clause({**reason, "updatedAt": now_iso()})
        sets.append("deadlineAt = if_not_exists(deadlineAt, :deadline)")
        return self._update_if(
            Key={"jobId": job_id},
            UpdateExpression="SET " + ", ".join(sets) + " REMOVE pairingDeadline, awaitingVideo",
            ConditionExpression="#status = :received AND attribute_not_exists(submission)",
            ExpressionAttributeNames={**names, "#status": "status"},
            ExpressionAttributeValues={**values, ":deadline": epoch_after(get_settings().job_deadline_seconds), ":received": JobState.RECEIVED.value},
        )

    def forget(self, job_id: str, attribute: str) -> None:
        """Remove a wait's record from the job (``paceSlot`` once used), if it is there."""
        self._update_if(
            Key={"jobId": job_id}, UpdateExpression="REMOVE #name", ConditionExpression="attribute_exists(#name)", ExpressionAttributeNames={"#name": attribute}
        )

    def _update_if(self, **update: Any) -> bool:
        """One conditional update; False (not an error) when its condition does not hold."""
        return conditional_update(self.table, **update) is not None

    def _update_returning(self, **update: Any) -> dict[str, Any] | None:
        """One conditional update answering the item as written; None when its condition does not hold."""
        return conditional_update(self.table, **update, ReturnValues="ALL_NEW")

    # Creation

    def create(self, job_id: str, attributes: dict[str, Any]) -> tuple[Job, bool]:
        """Create a RECEIVED job, or return the one that exists (``created`` says which)."""
        at = now_iso()
        item = _dynamo(
            {
                **attributes,
                "jobId": job_id,
                "status": JobState.RECEIVED.value,
                "createdAt": at,
                "updatedAt": at,
                "history": [{"state": JobState.RECEIVED.value, "at": at}],
            }
        )
        try:
            self.table.put_item(Item=item, ConditionExpression="attribute_not_exists(jobId)")
        except Exception as exc:
            if not _conditional_failed(exc):
                raise
            existing = self.get(job_id)
            if existing is None:
                raise
            return existing, False
        telemetry.job_received(job_id)
        return Job(item), True

    def update_details(self, job_id: str, attributes: dict[str, Any]) -> bool:
        """Record facts about an unclaimed RECEIVED job (provider, model, video); False if it moved on."""
        names, values, sets = _set_clause(attributes)
        values[":received"] = JobState.RECEIVED.value
        return self._update_if(
            Key={"jobId": job_id},
            UpdateExpression="SET " + ", ".join(sets),
            ConditionExpression="#status = :received AND attribute_not_exists(submission)",
            ExpressionAttributeNames={**names, "#status": "status"},
            ExpressionAttributeValues=values,
        )

    # The submission claim

    def claim_submission(self, job_id: str, deadline_at: int, details: dict[str, Any] | None = None) -> Claim | None:
        """Claim the right to call the provider; None if another attempt holds or used it.

        One conditional write records what intake found (``details``: provider, model, video),
        clears the pairing deadline (the video is here), sets ``deadline_at`` (epoch seconds, when
        the reconciler gives up waiting for the provider) and the job's callback token. The token
        is made on the first claim and kept by every later one, so the callback URL of the first
        attempt stays valid whatever the retries. It is stored in the item (encrypted at rest,
        read only by the stack's functions) because each attempt must send the same one; events,
        the status API and the output files never carry it.
        """
        claim_id = uuid.uuid4().hex
        token = secrets.token_urlsafe(32)
        names, values, sets = _set_clause(details or {})
        values.update(
            {
                ":claim": {"claimId": claim_id, "claimedAt": now_iso()},
                ":token": token,
                ":hash": hash_token(token),
                ":deadline": deadline_at,
                ":received": JobState.RECEIVED.value,
            }
        )
        sets += [
            "submission = :claim",
            "callbackToken = if_not_exists(callbackToken, :token)",
            "tokenHash = if_not_exists(tokenHash, :hash)",
            # Set by the first claim only: retries after refusals never push the deadline out.
            "deadlineAt = if_not_exists(deadlineAt, :deadline)",
        ]
        try:
            answer = self.table.update_item(
                Key={"jobId": job_id},
                UpdateExpression="SET " + ", ".join(sets) + " REMOVE pairingDeadline, awaitingVideo, flightWait",
                ConditionExpression="#status = :received AND attribute_not_exists(submission)",
                ExpressionAttributeNames={**names, "#status": "status"},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except Exception as exc:
            if _conditional_failed(exc):
                return None
            raise
        claimed = Job(answer["Attributes"])
        return Claim(claim_id, str(claimed.item["callbackToken"]), claimed.sent_before)

    def release_claim(self, job_id: str, claim_id: str, refusal: str, *, may_have_reached: bool = False) -> None:
        """Give the claim back for another attempt: after the provider provably did not take the
        request (429, 455, no connection), or, with ``may_have_reached``, after an unanswered
        request to a provider whose repeat cannot make a second task (Runware's own taskUUID).
        The latter is remembered for good (``ambiguousSend``): such a job may have a task, so it
        is never failed as "not taken". The token stays: every attempt sends the same callback URL."""
        values: dict[str, Any] = {":claim": claim_id, ":received": JobState.RECEIVED.value, ":refusal": refusal[:500], ":at": now_iso()}
        expression = "REMOVE submission SET lastRefusal = :refusal, updatedAt = :at"
        if may_have_reached:
            expression += ", ambiguousSend = if_not_exists(ambiguousSend, :sent)"
            values[":sent"] = {"reason": refusal[:500], "at": values[":at"]}
        else:
            # Not taken: the job's task slot (``inflight``) goes back; one that may have reached keeps it.
            expression = expression.replace("REMOVE submission", "REMOVE submission, flightSlot")
        self._update_releasing(
            Key={"jobId": job_id},
            UpdateExpression=expression,
            ConditionExpression="#status = :received AND submission.claimId = :claim",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues=values,
        )

    def move_on(self, job_id: str, claim_id: str | None, provider: str, model: str, refusal: JobError, *, tried_before: int | None = None) -> bool:
        """Give the claim back after ``provider`` refused the job in a way that says "not now, and
        not you" (maintenance, out of credits), and record it in ``providersTried``, in one
        conditional write: intake then picks the next provider of the job's chain. Only for a
        request provably not taken (never after an unanswered one). False when the claim is not
        this one any more (the job moved on another way). ``claim_id`` None: the job was never
        claimed (no slot at the provider within ``PaceMaxWaitSeconds``) and must still not be.
        ``tried_before``: the number of providers the caller saw in ``providersTried``; the move is
        made only if it is still that (of two attempts moving an unclaimed job on at once, one does)."""
        at = now_iso()
        entry: dict[str, Any] = {"provider": provider, "model": model, "reason": refusal.message[:500], "code": refusal.code, "at": at}
        entry["providerCode"] = refusal.details.get("providerCode")
        values: dict[str, Any] = {":received": JobState.RECEIVED.value, ":none": [], ":entry": [_dynamo(entry)], ":at": at}
        if claim_id is None:
            unclaimed = "attribute_not_exists(submission)"
        else:
            unclaimed, values[":claim"] = "submission.claimId = :claim", claim_id
        if tried_before == 0:
            unclaimed += " AND attribute_not_exists(providersTried)"
        elif tried_before is not None:
            unclaimed += " AND size(providersTried) = :tried"
            values[":tried"] = tried_before
        return self._update_releasing(
            Key={"jobId": job_id},
            UpdateExpression=(
                "REMOVE submission, lastRefusal, paceSlot, flightSlot, flightWait"
                " SET providersTried = list_append(if_not_exists(providersTried, :none), :entry), updatedAt = :at"
            ),
            ConditionExpression=f"#status = :received AND {unclaimed}",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues=values,
        )

    def note_unanswered(self, job_id: str, claim_id: str, reason: str) -> bool:
        """Record that the submit may have reached the provider without an answer (a 5xx, a
        timeout after sending). The claim and the token stay: the job is never sent again and
        waits for the callback or a poll until its deadline."""
        return self._update_if(
            Key={"jobId": job_id},
            UpdateExpression="SET submission.unanswered = :note, updatedAt = :at",
            ConditionExpression="#status = :received AND submission.claimId = :claim",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={
                ":claim": claim_id,
                ":received": JobState.RECEIVED.value,
                ":note": {"reason": reason[:500], "at": now_iso()},
                ":at": now_iso(),
            },
        )

    # Transitions

    def mark_submitted(self, job_id: str, task_id: str) -> bool:
        moved = self._move(job_id, JobState.SUBMITTED, {"submittedAt": now_iso()}, keep={"providerTaskId": task_id})
        if not moved:
            # A fast callback may have moved the job on already; keep the task id all the same
            # (finalize confirms the result with it).
            self._set_if_absent(job_id, "providerTaskId", task_id)
        return moved

    def mark_succeeded(self, job_id: str, video_urls: tuple[str, ...], cover_url: str | None, cost: float | None, task_id: str | None) -> bool:
        result: dict[str, Any] = {"videos": list(video_urls)}
        if cover_url:
            result["cover"] = cover_url
        attributes: dict[str, Any] = {"result": result}
        if cost is not None:
            attributes["cost"] = cost
        # The task id and the state in one conditional write: finalize never sees one without the other.
        return self._move(job_id, JobState.SUCCEEDED, attributes, keep={"providerTaskId": task_id} if task_id else None)

    def record_result(self, job_id: str, result: dict[str, Any], *, task_id: str | None = None) -> bool:
        """Add one result (``{"id", "url", ...}``) to a waiting job; True when it completed the set.

        Idempotent per result id: a repeated callback for a result already recorded changes
        nothing. The job moves to SUCCEEDED when it holds ``expectedResults`` results (1 unless
        the job asked for several), with the results in arrival order (``result-1`` is the first
        to arrive) and the summed cost.
        """
        # A job recorded before results were kept per item has no map yet; the nested write needs one.
        self.table.update_item(
            Key={"jobId": job_id},
            UpdateExpression="SET resultItems = if_not_exists(resultItems, :empty)",
            ExpressionAttributeValues={":empty": {}},
        )
        values: dict[str, Any] = {":item": _dynamo({**result, "receivedAt": now_iso()}), ":id": [str(result["id"])], ":none": []}
        allowed = sorted(state.value for state in ENTERED_FROM[JobState.SUCCEEDED])
        for index, state in enumerate(allowed):
            values[f":from{index}"] = state
        try:
            answer = self.table.update_item(
                Key={"jobId": job_id},
                # resultOrder keeps the arrival order, written in the same conditional update.
                UpdateExpression="SET resultItems.#result = :item, resultOrder = list_append(if_not_exists(resultOrder, :none), :id)",
                ConditionExpression=f"#status IN ({', '.join(f':from{index}' for index in range(len(allowed)))}) AND attribute_not_exists(resultItems.#result)",
                ExpressionAttributeNames={"#status": "status", "#result": str(result["id"])},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
            job = Job(answer["Attributes"])
        except Exception as exc:
            if not _conditional_failed(exc):
                raise
            # A repeated result, or the job has moved on. A repeat may follow an attempt cut off
            # between recording the last result and the move to SUCCEEDED: finish that move.
            found = self.get(job_id)
            if found is None or found.state not in ENTERED_FROM[JobState.SUCCEEDED]:
                return False
            job = found
        recorded: dict[str, dict[str, Any]] = _plain(job.item.get("resultItems", {}))
        if len(recorded) < job.expected_results:
            return False
        items = [recorded[result_id] for result_id in job.item.get("resultOrder", []) if result_id in recorded]
        costs = [item["cost"] for item in items if isinstance(item.get("cost"), int | float)]
        cost = round(sum(costs), 6) if costs else None
        return self.mark_succeeded(job_id, tuple(str(item["url"]) for item in items), items[0].get("cover"), cost, task_id)

    def mark_completed(self, job_id: str, outputs: list[dict[str, Any]], completed_at: str) -> bool:
        return self._move(job_id, JobState.COMPLETED, {"outputs": outputs}, at=completed_at)

    def mark_failed(self, job_id: str, error: JobError, *, unless_claimed: bool = False, only_from: JobState | None = None) -> bool:
        """``unless_claimed``: an intake check must not fail a job another attempt already sent.
        ``only_from``: fail only if the job is still in the state the caller examined (the
        reconciler's deadline must not fail a job a callback has just moved on)."""
        return self._move(job_id, JobState.FAILED, {"error": error.to_record()}, unclaimed_only=unless_claimed, only_from=only_from)

    def _move(
        self,
        job_id: str,
        target: JobState,
        attributes: dict[str, Any],
        at: str | None = None,
        *,
        unclaimed_only: bool = False,
        only_from: JobState | None = None,
        keep: dict[str, Any] | None = None,
    ) -> bool:
        """``keep``: attributes set only where the item has none yet (``if_not_exists``)."""
        at = at or now_iso()
        names, values, sets = _set_clause({**attributes, "status": target.value, "updatedAt": at})
        for index, (name, value) in enumerate((keep or {}).items()):
            names[f"#k{index}"] = name
            values[f":k{index}"] = _dynamo(value)
            sets.append(f"#k{index} = if_not_exists(#k{index}, :k{index})")
        names["#history"] = "history"
        names["#status"] = "status"
        values[":entry"] = [{"state": target.value, "at": at}]
        sets.append("#history = list_append(#history, :entry)")
        sources = ENTERED_FROM[target] & {only_from} if only_from is not None else ENTERED_FROM[target]
        allowed = sorted(state.value for state in sources) or ["(none)"]
        for index, state in enumerate(allowed):
            values[f":from{index}"] = state
        condition = f"#status IN ({', '.join(f':from{index}' for index in range(len(allowed)))})"
        if unclaimed_only:
            condition += " AND attribute_not_exists(submission)"
        written = self._update_returning(
            Key={"jobId": job_id},
            UpdateExpression="SET " + ", ".join(sets),
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )
        if written is not None:
            telemetry.job_moved(written)  # counted only for a move that was written
            if target in (JobState.SUCCEEDED, JobState.FAILED):
                _release_flight_slot(self.table, job_id, written.get("flightSlot"))  # the task ended
        return written is not None

    def _update_releasing(self, **update: Any) -> bool:
        """One conditional update that removes ``flightSlot``, then the release of that task slot
        (``inflight``); False when the condition does not hold."""
        old = conditional_update(self.table, **update, ReturnValues="UPDATED_OLD")
        if old is None:
            return False
        _release_flight_slot(self.table, str(update["Key"]["jobId"]), old.get("flightSlot"))
        return True

    def _set_if_absent(self, job_id: str, name: str, value: Any) -> None:
        self.table.update_item(
            Key={"jobId": job_id},
            UpdateExpression="SET #name = if_not_exists(#name, :value)",
            ExpressionAttributeNames={"#name": name},
            ExpressionAttributeValues={":value": _dynamo(value)},
        )

    # The reconciler's view: jobs that have sat in a state since before a cutoff.

    def stale(self, state: JobState, before: str, limit: int) -> list[Job]:
        """Up to ``limit`` jobs in ``state`` not updated since ``before``, oldest first (GSI query, never a scan)."""
        query: dict[str, Any] = {
            "IndexName": STATUS_INDEX,
            "KeyConditionExpression": "#status = :state AND updatedAt < :before",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {":state": state.value, ":before": before},
            "Limit": limit,
        }
        return self._query_pages(query, limit)

    def failed_without_error_json(self, since: str, limit: int) -> list[Job]:
        """Up to ``limit`` FAILED jobs updated since ``since`` whose ``error.json`` is not known to be
        written (``note_error_written``), oldest first. Pages through the status index, so any number
        of newer failures cannot hide an older one."""
        query: dict[str, Any] = {
            "IndexName": STATUS_INDEX,
            "KeyConditionExpression": "#status = :state AND updatedAt >= :since",
            "FilterExpression": "attribute_not_exists(errorWritten)",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {":state": JobState.FAILED.value, ":since": since},
        }
        return self._query_pages(query, limit)

    def _query_pages(self, query: dict[str, Any], limit: int) -> list[Job]:
        """Up to ``limit`` jobs of a status-index query, page after page (a filter may leave pages short)."""
        found: list[Job] = []
        while len(found) < limit:
            page = self.table.query(**query)
            found.extend(Job(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return found[:limit]

    def note_error_written(self, job_id: str) -> None:
        """Record that the FAILED job's ``error.json`` is in place (the reconciler's repair skips it).
        ``updatedAt`` stays: it is when the job failed."""
        self._update_if(
            Key={"jobId": job_id},
            UpdateExpression="SET errorWritten = :yes",
            ConditionExpression="#status = :failed",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={":yes": True, ":failed": JobState.FAILED.value},
        )

    def note_polled(self, job_id: str, state: JobState) -> None:
        """Record a poll that found the job still running, so other stale jobs get their turn."""
        self._update_if(
            Key={"jobId": job_id},
            UpdateExpression="SET updatedAt = :at, lastPolledAt = :at",
            ConditionExpression="#status = :state",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={":at": now_iso(), ":state": state.value},
        )

    def advance_poll(self, job_id: str, seq: int, message_id: str) -> bool:
        """Take poll ``seq`` of a SUBMITTED job's poll loop (``polling``); False when the message is stale.

        The job's ``pollSeq`` moves from ``seq - 1`` to ``seq`` in one conditional write, so of
        two messages with the same ``seq`` only one continues the loop: a duplicate never forks
        it. The same SQS message delivered again (``message_id``, after a failed send of the next
        one) may take its own step again. The write also marks the job as polled (``updatedAt``),
        so the reconciler's sweep leaves a job whose loop is alive to the loop.
        """
        first = "attribute_not_exists(pollSeq) OR " if seq == 1 else ""
        return self._update_if(
            Key={"jobId": job_id},
            UpdateExpression="SET pollSeq = :seq, pollMessageId = :message, updatedAt = :at, lastPolledAt = :at",
            ConditionExpression=f"#status = :submitted AND ({first}pollSeq = :previous OR (pollSeq = :seq AND pollMessageId = :message))",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={
                ":seq": seq,
                ":previous": seq - 1,
                ":message": message_id,
                ":at": now_iso(),
                ":submitted": JobState.SUBMITTED.value,
            },
        )

    def nudge_finalize(self, job_id: str, max_nudges: int) -> bool:
        """Touch a SUCCEEDED job so its stream record fires finalize again; False once ``max_nudges`` are used."""
        return self._update_if(
            Key={"jobId": job_id},
            UpdateExpression="SET updatedAt = :at, finalizeNudges = if_not_exists(finalizeNudges, :zero) + :one",
            ConditionExpression="#status = :succeeded AND (attribute_not_exists(finalizeNudges) OR finalizeNudges < :max)",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={":at": now_iso(), ":zero": 0, ":one": 1, ":max": max_nudges, ":succeeded": JobState.SUCCEEDED.value},
        )

    # Pairing: a sidecar waiting for its video leaves a note under the video's key.

    def add_waiter(self, bucket: str, video_ref: str, job_id: str, expires_at: int) -> None:
        self.table.update_item(
            Key={"jobId": _waiter_key(bucket, video_ref)},
            UpdateExpression="ADD waitingJobIds :job SET expiresAt = :expires",
            ExpressionAttributeValues={":job": {job_id}, ":expires": expires_at},
        )

    def waiters(self, bucket: str, video_refs: list[str]) -> list[str]:
        job_ids: list[str] = []
        for ref in video_refs:
            item = self.table.get_item(Key={"jobId": _waiter_key(bucket, ref)}, ConsistentRead=True).get("Item")
            if item:
                job_ids.extend(sorted(item.get("waitingJobIds", ())))
        return job_ids


def _release_flight_slot(table: Any, job_id: str, slot: Any) -> None:
    """Give back the job's task slot, if it held one. Best effort: the state is written already,
    and ``inflight.acquire`` takes over a slot whose job is no longer in flight."""
    if not isinstance(slot, dict):
        return
    from . import inflight  # inflight reads jobs: imported when first needed

    try:
        inflight.release(table, str(slot["provider"]), int(slot["index"]), job_id)
    except Exception as exc:  # never fail the move for it
        logger.warning("task slot not released; the next acquire takes it over", extra={"job_id": job_id, "error": type(exc).__name__})


def _waiter_key(bucket: str, video_ref: str) -> str:
    return f"waiting#{bucket}/{video_ref}"


def _set_clause(attributes: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any], list[str]]:
    names: dict[str, str] = {}
    values: dict[str, Any] = {}
    sets: list[str] = []
    for index, (name, value) in enumerate(attributes.items()):
        names[f"#a{index}"] = name
        values[f":v{index}"] = _dynamo(value)
        sets.append(f"#a{index} = :v{index}")
    return names, values, sets


def epoch_after(seconds: int) -> int:
    return int(time.time()) + seconds
