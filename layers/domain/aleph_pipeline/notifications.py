"""EventBridge notifications: one event for every job that becomes COMPLETED or FAILED.

The notify function reads the jobs table's stream (filtered to the records that moved a job into
a terminal state), so the state machine in ``jobs.py`` stays the only writer of job state. Events
are delivered at least once (consumers deduplicate on ``detail.jobId`` + ``detail.state``): an
event EventBridge does not take is kept whole in the undelivered-event queue (the stream keeps
records for only 24 hours, its on-failure queue only their metadata) and re-published from there
until it is taken. The detail's shape is ``schemas.job_events.JobEventDetail`` (the documented schema, a
pydantic model the notify function never imports: it builds the detail as a plain dict, in the
schema's field order); every entry is kept well inside EventBridge's 256 KB limit, whatever the
job's error message, keys or URL hold.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any

from .clients import client
from .config import get_settings
from .errors import HINTS
from .jobs import TERMINAL, Job, JobState
from .log import logger

SOURCE = "aleph.pipeline"
DETAIL_TYPES: dict[JobState, str] = {JobState.COMPLETED: "Job Completed", JobState.FAILED: "Job Failed"}
MAX_ENTRIES_PER_CALL = 10  # PutEvents' limit
# EventBridge's limit for one entry and for all the entries of one PutEvents call, counted as
# EventBridge counts it (``entry_size``).
MAX_ENTRY_BYTES = 256 * 1024
# What one job event may use of it: room to spare, and a kept event fits an SQS message.
EVENT_BUDGET_BYTES = 64 * 1024
MAX_MESSAGE_CHARS = 4096  # the error message: a few KB says what went wrong; error.json has the record
MAX_TEXT_CHARS = 2048  # any other text (S3 keys are at most 1,024 bytes: never cut by this)
MAX_OUTPUT_KEYS = 20  # job.json (or error.json) is always kept: it lists every output
MIN_CUT_CHARS = 64  # the event budget never shortens a text below this

# Where the notify function keeps the events EventBridge did not take (the template's
# UndeliveredJobEventQueue), and how long a kept event waits before it is re-published.
UNDELIVERED_QUEUE_ENV = "UNDELIVERED_EVENT_QUEUE_URL"
REPUBLISH_DELAY_SECONDS = 60


def transition_event(old_image: Mapping[str, Any] | None, new_image: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The PutEvents entry for a stream record that moved a job into COMPLETED or FAILED, else None."""
    if not new_image or "status" not in new_image or "jobId" not in new_image:
        return None
    new = Job(dict(new_image))
    try:
        state = new.state
    except ValueError:
        return None
    if state not in TERMINAL:
        return None
    if old_image and old_image.get("status") == new_image.get("status"):
        return None  # a later write to a finished job, not its transition
    entry: dict[str, Any] = {"Source": SOURCE, "DetailType": DETAIL_TYPES[state], "EventBusName": get_settings().event_bus_name}
    detail = bounded_detail(job_event_detail(new), lambda d: entry_size({**entry, "Detail": _dump(d)}))
    entry["Detail"] = _dump(detail)
    return entry


def entry_size(entry: Mapping[str, Any]) -> int:
    """An entry's size as EventBridge counts it against its limit: UTF-8 bytes of Source,
    DetailType, Detail and each of Resources, plus 14 for a Time."""
    size = 14 if entry.get("Time") is not None else 0
    for name in ("Source", "DetailType", "Detail"):
        value = entry.get(name)
        if value is not None:
            size += len(str(value).encode("utf-8"))
    size += sum(len(str(resource).encode("utf-8")) for resource in entry.get("Resources") or () if resource is not None)
    return size


def _dump(detail: Mapping[str, Any]) -> str:
    return json.dumps(detail, ensure_ascii=False, separators=(",", ":"))


def _shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in a marker that says it was cut."""
    if len(text) <= limit:
        return text
    marker = f" … [truncated: {len(text)} characters in all]"
    return text[: max(0, limit - len(marker))] + marker


def _texts(detail: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """(container, key) of every text field of a detail, the error's included, not outputKeys."""
    for container in (detail, detail.get("error")):
        if isinstance(container, dict):
            for key, value in container.items():
                if isinstance(value, str):
                    yield container, key


def bounded_detail(detail: dict[str, Any], size_of: Callable[[dict[str, Any]], int]) -> dict[str, Any]:
    """The detail with every text capped (the error message at ``MAX_MESSAGE_CHARS``, the rest at
    ``MAX_TEXT_CHARS``) and then, while ``size_of(detail)`` exceeds ``EVENT_BUDGET_BYTES``, the
    longest text halved, then output keys dropped (job.json / error.json is kept: it lists them
    all). A cut text ends in a marker; nothing is cut from an event that fits."""
    detail = json.loads(json.dumps(detail))  # a copy, the error's map included
    originals = {(id(container), key): container[key] for container, key in _texts(detail)}
    for container, key in _texts(detail):
        container[key] = _shorten(container[key], MAX_MESSAGE_CHARS if container is detail.get("error") and key == "message" else MAX_TEXT_CHARS)
    keys = detail.get("outputKeys")
    if isinstance(keys, list) and len(keys) > MAX_OUTPUT_KEYS:
        detail["outputKeys"] = [*keys[: MAX_OUTPUT_KEYS - 1], keys[-1]]
    while size_of(detail) > EVENT_BUDGET_BYTES:
        container, key = max(_texts(detail), key=lambda field: len(field[0][field[1]]))
        text = container[key]
        if len(text) > MIN_CUT_CHARS:
            # Cut from the original, so that the marker gives its length.
            container[key] = _shorten(originals[(id(container), key)], max(MIN_CUT_CHARS, len(text) // 2))
        elif isinstance(detail.get("outputKeys"), list) and len(detail["outputKeys"]) > 1:
            detail["outputKeys"] = detail["outputKeys"][1:]
        else:
            raise ValueError(f"job event of {detail.get('jobId')} cannot be brought under {EVENT_BUDGET_BYTES} bytes")
    return detail


def job_event_detail(job: Job) -> dict[str, Any]:
    """The event's detail for a job in COMPLETED or FAILED: the fields of ``JobEventDetail``, in its order."""
    item = job.to_manifest()
    settings = get_settings()
    prefix = item.get("outputPrefix")
    error: dict[str, Any] | None = None
    keys: list[str] = [str(output["key"]) for output in item.get("outputs") or [] if isinstance(output, dict) and "key" in output]
    if job.state == JobState.FAILED:
        record = item.get("error") or {}
        code = str(record.get("code", "unknown"))
        error = {
            "code": code,
            "message": str(record.get("message", "")),
            "stage": str(record.get("stage", "")),
            "retryable": bool(record.get("retryable", False)),
            "hint": str(record.get("hint") or HINTS.get(code, "")),
        }
        if prefix:
            keys.append(f"{prefix}error.json")
    elif prefix:
        keys.append(f"{prefix}job.json")
    cost = item.get("cost")
    return {
        "jobId": job.id,
        "state": job.state.value,
        "stack": settings.stack_name,
        "provider": _text(item.get("provider")),
        "model": _text(item.get("model")),
        "inputBucket": _text(item.get("inputBucket")),
        "sidecarKey": _text(item.get("sidecarKey")),
        "inputKey": _text(item.get("videoKey")),
        "inputUrl": _text(item.get("videoUrl")),
        "outputBucket": settings.output_bucket_name,
        "outputPrefix": _text(prefix),
        "outputKeys": keys,
        "cost": float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
        "error": error,
        "createdAt": _text(item.get("createdAt")),
        "finishedAt": _text(item.get("updatedAt")),
    }


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class PublishFailed(RuntimeError):
    """EventBridge did not take every entry."""


@lru_cache(maxsize=1)
def _events_client() -> Any:
    import boto3

    return boto3.client("events")


def _calls(entries: Sequence[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """The entries in PutEvents calls of at most 10 entries and ``MAX_ENTRY_BYTES`` in all."""
    call: list[dict[str, Any]] = []
    size = 0
    for entry in entries:
        entry_bytes = entry_size(entry)
        if entry_bytes > MAX_ENTRY_BYTES:
            raise PublishFailed(f"a {entry['DetailType']} event is {entry_bytes} bytes, over EventBridge's {MAX_ENTRY_BYTES}-byte limit")
        if call and (len(call) == MAX_ENTRIES_PER_CALL or size + entry_bytes > MAX_ENTRY_BYTES):
            yield call
            call, size = [], 0
        call.append(entry)
        size += entry_bytes
    if call:
        yield call


def publish(entries: Sequence[dict[str, Any]]) -> None:
    """Send the entries; raise ``PublishFailed`` naming the first refusal if any was not taken."""
    for call in _calls(entries):
        answer = _events_client().put_events(Entries=call)
        if answer.get("FailedEntryCount"):
            refused: dict[str, Any] = next((e for e in answer.get("Entries", []) if e.get("ErrorCode")), {})
            raise PublishFailed(f"EventBridge refused {answer['FailedEntryCount']} event(s): {refused.get('ErrorCode')}: {refused.get('ErrorMessage')}")


def _job_id(entry: Mapping[str, Any]) -> str | None:
    try:
        job_id = json.loads(entry["Detail"]).get("jobId")
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return str(job_id) if job_id is not None else None


def publish_or_keep(entry: dict[str, Any]) -> bool:
    """Publish one job event; if EventBridge does not take it (after the client's retries), keep
    it whole in the undelivered-event queue and return False. Raises only when it could be
    neither published nor kept (the stream then retries the record)."""
    try:
        publish([entry])
    except Exception as exc:  # whatever kept EventBridge from taking it, the event is kept
        queue_url = get_settings().undelivered_event_queue_url
        if not queue_url:
            raise
        reason = f"{type(exc).__name__}: {exc}"[:1000]
        job_id = _job_id(entry) or "unknown"
        client("sqs").send_message(
            QueueUrl=queue_url,
            MessageBody=json.dumps(entry, ensure_ascii=False),
            DelaySeconds=REPUBLISH_DELAY_SECONDS,
            MessageAttributes={
                "jobId": {"DataType": "String", "StringValue": job_id},
                "reason": {"DataType": "String", "StringValue": reason},
            },
        )
        logger.warning("job event not taken by EventBridge: kept for re-publishing", extra={"job_id": job_id, "reason": reason})
        return False
    return True


def undelivered_entry(body: str) -> dict[str, Any]:
    """The PutEvents entry kept in an undelivered-event message, addressed to the stack's bus now
    (so a corrected EventBusName also delivers what waited)."""
    try:
        entry = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"undelivered job event message is not JSON: {exc}") from None
    missing = [name for name in ("Source", "DetailType", "Detail") if not isinstance(entry, dict) or not isinstance(entry.get(name), str)]
    if missing:
        raise ValueError(f"undelivered job event message is not a PutEvents entry: no text {', '.join(missing)}")
    return {**entry, "EventBusName": get_settings().event_bus_name}
