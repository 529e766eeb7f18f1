"""Lambda's event source mappings, emulated against moto server.

- ``SqsEventSource``: long-polls the queue and invokes the function with the exact Lambda SQS
  event; honours ``batchItemFailures``: successes are deleted, failures left alone, so they come
  back when the queue's visibility timeout ends, like Lambda's poller (the queue's redrive policy
  moves them to the DLQ after maxReceiveCount).
- ``StreamEventSource``: reads every shard of the table's stream, applies the mapping's
  FilterCriteria, invokes with the exact DynamoDB Streams event in batches, in order per item,
  honours ``batchItemFailures`` / bisect-on-error / MaximumRetryAttempts and sends exhausted
  batches to the on-failure queue with Lambda's invocation record.
- ``ScheduleEventSource``: invokes with an EventBridge "Scheduled Event" at a fixed interval.

Handlers run in this process through ``LambdaFunction``; nothing here knows what they do.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from local.event_filter import matches_any
from local.lambda_runtime import LOCAL_ACCOUNT_ID, Invocation, LambdaFunction

log = logging.getLogger("local.dispatcher")

ClientFactory = Callable[[str], Any]  # service name -> boto3 client

# The attributes the SQS event source puts in each record (plus the FIFO ones when present).
_SQS_RECORD_ATTRIBUTES = (
    "ApproximateReceiveCount",
    "SentTimestamp",
    "SenderId",
    "ApproximateFirstReceiveTimestamp",
    "AWSTraceHeader",
    "SequenceNumber",
    "MessageGroupId",
    "MessageDeduplicationId",
)


# ------------------------------------------------------------------------------ event shapes


def build_sqs_event(messages: Sequence[Mapping[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """The event Lambda's SQS poller sends, from ``ReceiveMessage`` results."""
    records = []
    for message in messages:
        attributes = message.get("Attributes") or {}
        records.append(
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message.get("Body", ""),
                "attributes": {k: str(attributes[k]) for k in _SQS_RECORD_ATTRIBUTES if k in attributes},
                "messageAttributes": {name: _sqs_message_attribute(value) for name, value in (message.get("MessageAttributes") or {}).items()},
                "md5OfBody": message.get("MD5OfBody") or hashlib.md5(message.get("Body", "").encode(), usedforsecurity=False).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
        )
    return {"Records": records}


def _sqs_message_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"stringListValues": [], "binaryListValues": [], "dataType": value.get("DataType", "String")}
    if "StringValue" in value:
        out["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        out["binaryValue"] = _b64(value["BinaryValue"])
    return out


def build_stream_record(record: Mapping[str, Any], stream_arn: str, region: str) -> dict[str, Any]:
    """One record of the event Lambda sends for a DynamoDB stream, from ``GetRecords``."""
    dynamodb = dict(record.get("dynamodb") or {})
    created = dynamodb.get("ApproximateCreationDateTime")
    body: dict[str, Any] = {}
    if created is not None:
        body["ApproximateCreationDateTime"] = _epoch_seconds(created)
    for key in ("Keys", "NewImage", "OldImage"):
        if key in dynamodb:
            body[key] = _attribute_map(dynamodb[key])
    body["SequenceNumber"] = str(dynamodb.get("SequenceNumber", ""))
    body["SizeBytes"] = int(dynamodb.get("SizeBytes", 0))
    body["StreamViewType"] = dynamodb.get("StreamViewType", "NEW_AND_OLD_IMAGES")
    out: dict[str, Any] = {
        "eventID": record.get("eventID") or uuid.uuid4().hex,
        "eventName": record.get("eventName"),
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": record.get("awsRegion") or region,
        "dynamodb": body,
        "eventSourceARN": stream_arn,
    }
    if record.get("userIdentity"):
        out["userIdentity"] = dict(record["userIdentity"])
    return out


def build_scheduled_event(rule_arn: str, region: str, account_id: str = LOCAL_ACCOUNT_ID) -> dict[str, Any]:
    """An EventBridge "Scheduled Event", as a Schedule event source delivers it."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account_id,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    }


def failed_item_ids(result: Any, valid_ids: Sequence[str]) -> set[str]:
    """The ids a ``batchItemFailures`` answer reports, with Lambda's rules.

    An empty or missing list (or a None/empty answer) means full success. An identifier that is
    empty, null, of the wrong shape or not in the batch makes the whole batch a failure.
    """
    if not isinstance(result, Mapping):
        return set()
    failures = result.get("batchItemFailures")
    if failures is None:
        return set()
    if not isinstance(failures, list):
        log.warning("batchItemFailures is not a list: the whole batch counts as failed")
        return set(valid_ids)
    failed: set[str] = set()
    for item in failures:
        identifier = item.get("itemIdentifier") if isinstance(item, Mapping) else None
        if not isinstance(identifier, str) or identifier not in valid_ids:
            log.warning("batchItemFailures has an invalid itemIdentifier %r: the whole batch counts as failed", identifier)
            return set(valid_ids)
        failed.add(identifier)
    return failed


def _b64(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def _epoch_seconds(value: Any) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return int(value.timestamp())
    return int(float(value))


def _attribute_value(value: Any) -> Any:
    """Undo botocore's decoding of binary attribute values (the event carries base64 strings)."""
    if not isinstance(value, Mapping):
        return value
    out: dict[str, Any] = {}
    for kind, inner in value.items():
        if kind == "B":
            out[kind] = _b64(inner)
        elif kind == "BS":
            out[kind] = [_b64(v) for v in inner]
        elif kind == "M":
            out[kind] = _attribute_map(inner)
        elif kind == "L":
            out[kind] = [_attribute_value(v) for v in inner]
        else:
            out[kind] = inner
    return out


def _attribute_map(item: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _attribute_value(v) for name, v in item.items()}


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return str(value.astimezone(UTC).isoformat(timespec="milliseconds")).replace("+00:00", "Z")
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ------------------------------------------------------------------------------------- SQS


class SqsEventSource:
    """SQS -> function, like an event source mapping with ReportBatchItemFailures."""

    def __init__(
        self,
        function: LambdaFunction,
        *,
        queue_url: str,
        queue_arn: str,
        region: str,
        client_factory: ClientFactory,
        batch_size: int = 10,
        report_batch_item_failures: bool = True,
        concurrency: int = 4,
        wait_seconds: int = 1,
    ) -> None:
        self.function = function
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.region = region
        self.batch_size = max(1, min(10, batch_size))
        self.report_batch_item_failures = report_batch_item_failures
        self.concurrency = max(1, concurrency)
        self.wait_seconds = wait_seconds
        self._client_factory = client_factory
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for index in range(self.concurrency):
            client = self._client_factory("sqs")
            thread = threading.Thread(target=self._run, args=(client,), name=f"sqs-{self.function.name}-{index}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> list[str]:
        """Wait for the pollers; return the names of those still running after ``timeout``."""
        return _join_all(self._threads, timeout)

    def _run(self, sqs: Any) -> None:
        while not self._stop.is_set():
            try:
                response = sqs.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=self.batch_size,
                    WaitTimeSeconds=self.wait_seconds,
                    MessageSystemAttributeNames=["All"],
                    MessageAttributeNames=["All"],
                )
            except Exception as exc:  # moto restarting, or shutting down
                if not self._stop.is_set():
                    log.warning("receiving from %s failed: %s", self.queue_url, exc)
                    self._stop.wait(1.0)
                continue
            messages = response.get("Messages") or []
            if messages:
                self.handle_batch(sqs, messages)

    def handle_batch(self, sqs: Any, messages: Sequence[Mapping[str, Any]]) -> None:
        ids = [m["MessageId"] for m in messages]
        invocation = self.function.invoke(build_sqs_event(messages, self.queue_arn, self.region))
        if not invocation.ok:
            failed = set(ids)
        elif self.report_batch_item_failures:
            failed = failed_item_ids(invocation.result, ids)
        else:
            failed = set()
        done = [m for m in messages if m["MessageId"] not in failed]
        # The failed ones are left as they are: they come back when the queue's visibility timeout ends.
        left = len(messages) - len(done)
        _log_invocation(self.function, invocation, f"{len(messages)} SQS message(s)", f"{left} back after the visibility timeout" if left else "")
        for chunk in _chunks(done, 10):
            self._call(
                sqs.delete_message_batch, QueueUrl=self.queue_url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)]
            )

    def _call(self, method: Callable[..., Any], **kwargs: Any) -> None:
        try:
            method(**kwargs)
        except Exception as exc:
            log.warning("%s on %s failed: %s", getattr(method, "__name__", "call"), self.queue_url, exc)


# ------------------------------------------------------------------------------- streams


class _Lane:
    """Records of some items, in stream order; one worker thread invokes the function on them."""

    def __init__(self) -> None:
        self.items: deque[tuple[str, dict[str, Any]]] = deque()  # (shard id, record)
        self.cond = threading.Condition()


class StreamEventSource:
    """DynamoDB stream -> function, like an event source mapping with FilterCriteria.

    Records are spread over ``lanes`` by item key (ParallelizationFactor-like): order is kept
    per item, and one slow invocation does not hold back other items.
    """

    def __init__(
        self,
        function: LambdaFunction,
        *,
        table_name: str,
        region: str,
        client_factory: ClientFactory,
        filters: Iterable[Mapping[str, Any]] = (),
        batch_size: int = 100,
        report_batch_item_failures: bool = True,
        bisect_on_error: bool = False,
        maximum_retry_attempts: int = -1,
        on_failure_queue_url: str | None = None,
        lanes: int = 4,
        poll_interval: float = 0.1,
        max_poll_interval: float = 1.0,
        retry_backoff_seconds: float = 0.2,
        max_retry_backoff_seconds: float = 2.0,
        shard_refresh_seconds: float = 5.0,
    ) -> None:
        self.function = function
        self.table_name = table_name
        self.region = region
        self.filters = [dict(f) for f in filters]
        self.batch_size = max(1, batch_size)
        self.report_batch_item_failures = report_batch_item_failures
        self.bisect_on_error = bisect_on_error
        self.maximum_retry_attempts = maximum_retry_attempts
        self.on_failure_queue_url = on_failure_queue_url
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.retry_backoff_seconds = retry_backoff_seconds
        self.max_retry_backoff_seconds = max_retry_backoff_seconds
        self.shard_refresh_seconds = shard_refresh_seconds
        self._client_factory = client_factory
        self._lanes = [_Lane() for _ in range(max(1, lanes))]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.stream_arn: str | None = None
        self._iterators: dict[str, str | None] = {}  # shard id -> next iterator (None: closed)
        self._last_sequence: dict[str, str] = {}

    def start(self) -> None:
        dynamodb = self._client_factory("dynamodb")
        self.stream_arn = dynamodb.describe_table(TableName=self.table_name)["Table"].get("LatestStreamArn")
        if not self.stream_arn:
            raise RuntimeError(f"table {self.table_name} has no stream")
        streams = self._client_factory("dynamodbstreams")
        # The table is created by this stack just before: reading from the trim horizon is the
        # mapping's LATEST at creation time, without missing a record written meanwhile.
        self._refresh_shards(streams)
        poller = threading.Thread(target=self._poll, args=(streams,), name=f"stream-{self.function.name}", daemon=True)
        self._threads.append(poller)
        sqs = self._client_factory("sqs") if self.on_failure_queue_url else None
        for index, lane in enumerate(self._lanes):
            thread = threading.Thread(target=self._work, args=(lane, sqs), name=f"stream-{self.function.name}-lane{index}", daemon=True)
            self._threads.append(thread)
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for lane in self._lanes:
            with lane.cond:
                lane.cond.notify_all()

    def join(self, timeout: float) -> list[str]:
        return _join_all(self._threads, timeout)

    # -------------------------------------------------------------------------- reading

    @property
    def _arn(self) -> str:
        if self.stream_arn is None:
            raise RuntimeError("the stream source is not started")
        return self.stream_arn

    def _refresh_shards(self, streams: Any) -> None:
        shards: list[dict[str, Any]] = []
        start: str | None = None
        while True:
            kwargs: dict[str, Any] = {"StreamArn": self._arn}
            if start:
                kwargs["ExclusiveStartShardId"] = start
            description = streams.describe_stream(**kwargs)["StreamDescription"]
            shards.extend(description.get("Shards") or [])
            start = description.get("LastEvaluatedShardId")
            if not start:
                break
        for shard in shards:
            shard_id = shard["ShardId"]
            if shard_id in self._iterators:
                continue
            iterator = streams.get_shard_iterator(StreamArn=self._arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            self._iterators[shard_id] = iterator
            log.debug("reading stream shard %s", shard_id)

    def _poll(self, streams: Any) -> None:
        # Every GetRecords makes moto keep one more iterator: back off while the stream is idle.
        next_refresh = time.monotonic() + self.shard_refresh_seconds
        interval = self.poll_interval
        while not self._stop.is_set():
            got_any = False
            for shard_id, iterator in list(self._iterators.items()):
                if iterator is None or self._stop.is_set():
                    continue
                try:
                    response = streams.get_records(ShardIterator=iterator, Limit=1000)
                except Exception as exc:
                    if self._stop.is_set():
                        return
                    log.warning("reading stream shard %s failed (%s): starting again after the last record", shard_id, exc)
                    self._iterators[shard_id] = self._reopen(streams, shard_id)
                    continue
                self._iterators[shard_id] = response.get("NextShardIterator")
                for record in response.get("Records") or []:
                    got_any = True
                    self._last_sequence[shard_id] = record["dynamodb"]["SequenceNumber"]
                    self._route(shard_id, record)
            if time.monotonic() >= next_refresh:
                try:
                    self._refresh_shards(streams)
                except Exception as exc:
                    if not self._stop.is_set():
                        log.warning("describing the stream failed: %s", exc)
                next_refresh = time.monotonic() + self.shard_refresh_seconds
            if got_any:
                interval = self.poll_interval
            else:
                self._stop.wait(interval)
                interval = min(self.max_poll_interval, interval * 1.5)

    def _reopen(self, streams: Any, shard_id: str) -> str | None:
        try:
            last = self._last_sequence.get(shard_id)
            kwargs: dict[str, Any] = {"StreamArn": self.stream_arn, "ShardId": shard_id}
            if last:
                kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=last)
            else:
                kwargs.update(ShardIteratorType="TRIM_HORIZON")
            return str(streams.get_shard_iterator(**kwargs)["ShardIterator"])
        except Exception as exc:
            log.warning("cannot reopen shard %s: %s", shard_id, exc)
            return self._iterators.get(shard_id)

    def _route(self, shard_id: str, raw: Mapping[str, Any]) -> None:
        record = build_stream_record(raw, self._arn, self.region)
        if not matches_any(self.filters, record):
            return
        keys = json.dumps(record["dynamodb"].get("Keys"), sort_keys=True)
        lane = self._lanes[zlib.crc32(f"{shard_id}|{keys}".encode()) % len(self._lanes)]
        with lane.cond:
            lane.items.append((shard_id, record))
            lane.cond.notify()

    # ------------------------------------------------------------------------ invoking

    def _work(self, lane: _Lane, sqs: Any) -> None:
        while not self._stop.is_set():
            with lane.cond:
                while not lane.items and not self._stop.is_set():
                    lane.cond.wait(0.5)
            if not self._stop.is_set():
                self._drain(lane, sqs)

    def _take(self, lane: _Lane, limit: int) -> list[tuple[str, dict[str, Any]]]:
        """Up to ``limit`` records from the head of the lane, all from one shard (not removed)."""
        with lane.cond:
            batch: list[tuple[str, dict[str, Any]]] = []
            for shard_id, record in lane.items:
                if len(batch) >= limit or (batch and batch[0][0] != shard_id):
                    break
                batch.append((shard_id, record))
            return batch

    def _pop(self, lane: _Lane, count: int) -> None:
        with lane.cond:
            for _ in range(count):
                lane.items.popleft()

    def _drain(self, lane: _Lane, sqs: Any) -> None:
        limit = self.batch_size
        retries = 0
        invocations = 0
        while not self._stop.is_set():
            batch = self._take(lane, limit)
            if not batch:
                return
            records = [record for _, record in batch]
            sequence_numbers = [r["dynamodb"]["SequenceNumber"] for r in records]
            invocation = self.function.invoke({"Records": records})
            invocations += 1
            if not invocation.ok:
                first_failed = 0
            elif self.report_batch_item_failures:
                failed = failed_item_ids(invocation.result, sequence_numbers)
                first_failed = min((sequence_numbers.index(s) for s in failed), default=len(batch))
            else:
                first_failed = len(batch)
            _log_invocation(
                self.function,
                invocation,
                f"{len(batch)} stream record(s)",
                "" if first_failed == len(batch) else f"retrying from record {first_failed + 1}",
            )
            self._pop(lane, first_failed)
            if first_failed == len(batch):
                limit, retries, invocations = self.batch_size, 0, 0
                continue
            if first_failed > 0:
                retries, invocations = 0, 1
            if not invocation.ok and self.bisect_on_error and len(batch) > 1:
                limit = max(1, len(batch) // 2)  # splitting does not use up retries
                continue
            retries += 1
            if 0 <= self.maximum_retry_attempts < retries:
                failed_batch = batch[first_failed:]
                self._discard(sqs, failed_batch, invocation, invocations)
                self._pop(lane, len(failed_batch))
                limit, retries, invocations = self.batch_size, 0, 0
                continue
            delay = min(self.max_retry_backoff_seconds, self.retry_backoff_seconds * 2 ** (retries - 1))
            self._stop.wait(delay)

    def _discard(self, sqs: Any, batch: Sequence[tuple[str, dict[str, Any]]], invocation: Invocation, invocations: int) -> None:
        """Send Lambda's invocation record for an exhausted batch to the on-failure queue."""
        records = [record for _, record in batch]
        first, last = records[0]["dynamodb"], records[-1]["dynamodb"]
        response_context: dict[str, Any] = {"statusCode": 200, "executedVersion": "$LATEST"}
        if not invocation.ok:
            response_context["functionError"] = "Unhandled"
        message = {
            "requestContext": {
                "requestId": invocation.request_id,
                "functionArn": self.function.arn,
                "condition": "RetryAttemptsExhausted",
                "approximateInvokeCount": invocations,
            },
            "responseContext": response_context,
            "version": "1.0",
            "timestamp": _iso(None),
            "DDBStreamBatchInfo": {
                "shardId": batch[0][0],
                "startSequenceNumber": first["SequenceNumber"],
                "endSequenceNumber": last["SequenceNumber"],
                "approximateArrivalOfFirstRecord": _iso_epoch(first.get("ApproximateCreationDateTime")),
                "approximateArrivalOfLastRecord": _iso_epoch(last.get("ApproximateCreationDateTime")),
                "batchSize": len(records),
                "streamArn": self.stream_arn,
            },
        }
        if sqs is None or not self.on_failure_queue_url:
            log.error(
                "%s: %d stream record(s) dropped after %d retries (no on-failure destination)", self.function.name, len(records), self.maximum_retry_attempts
            )
            return
        try:
            sqs.send_message(QueueUrl=self.on_failure_queue_url, MessageBody=json.dumps(message))
            log.error("%s: %d stream record(s) sent to the on-failure queue after %d retries", self.function.name, len(records), self.maximum_retry_attempts)
        except Exception as exc:
            log.error("%s: sending the failed batch to %s failed: %s", self.function.name, self.on_failure_queue_url, exc)


def _iso_epoch(value: Any) -> str:
    if value is None:
        return _iso(None)
    return _iso(datetime.fromtimestamp(float(value), UTC))


# ------------------------------------------------------------------------------ schedules


class ScheduleEventSource:
    """An EventBridge schedule -> function, every ``interval_seconds`` (first run after one)."""

    def __init__(self, function: LambdaFunction, *, interval_seconds: float, region: str, rule_name: str) -> None:
        self.function = function
        self.interval_seconds = interval_seconds
        self.region = region
        self.rule_arn = f"arn:aws:events:{region}:{function.account_id}:rule/{rule_name}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"schedule-{function.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> list[str]:
        return _join_all([self._thread], timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            invocation = self.function.invoke(build_scheduled_event(self.rule_arn, self.region))
            _log_invocation(self.function, invocation, "scheduled event", "")


# --------------------------------------------------------------------------------- helpers


def _log_invocation(function: LambdaFunction, invocation: Invocation, what: str, extra: str) -> None:
    outcome = "ok" if invocation.ok else f"failed ({invocation.error})"
    suffix = f", {extra}" if extra else ""
    level = logging.INFO if invocation.ok and not extra else logging.WARNING
    log.log(level, "%s <- %s: %s in %.0f ms [%s]%s", function.name, what, outcome, invocation.duration * 1000, invocation.request_id, suffix)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _join_all(threads: Sequence[threading.Thread], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    for thread in threads:
        if thread.is_alive():
            thread.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threads if t.is_alive()]
