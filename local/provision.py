"""Create the contract's resources in moto server, with the settings read from the template."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from local.simulator.config import DEFAULT_KEYS as SIMULATOR_KEYS
from local.template_config import CONTRACT_INPUT_PREFIX, QueueConfig, TemplateConfig

log = logging.getLogger("local.provision")

# The provider keys the local stack puts in its secret: the simulator's own (its accounts).
LOCAL_SECRET_VALUE: dict[str, Any] = dict(SIMULATOR_KEYS)

CONTRACT_JOBS_TABLE: dict[str, Any] = {
    "AttributeDefinitions": [
        {"AttributeName": "jobId", "AttributeType": "S"},
        {"AttributeName": "status", "AttributeType": "S"},
        {"AttributeName": "updatedAt", "AttributeType": "S"},
    ],
    "KeySchema": [{"AttributeName": "jobId", "KeyType": "HASH"}],
    "GlobalSecondaryIndexes": [
        {
            "IndexName": "by-status",
            "KeySchema": [
                {"AttributeName": "status", "KeyType": "HASH"},
                {"AttributeName": "updatedAt", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        }
    ],
    "BillingMode": "PAY_PER_REQUEST",
    "StreamSpecification": {"StreamViewType": "NEW_AND_OLD_IMAGES"},
}


@dataclass(frozen=True)
class ResourceNames:
    """The local names of the contract's resources."""

    input_bucket: str = "aleph-input"
    output_bucket: str = "aleph-output"
    submit_queue: str = "aleph-submit"
    pace_queue: str = "aleph-pace"
    submit_dlq: str = "aleph-submit-dlq"
    finalize_dlq: str = "aleph-finalize-dlq"
    notify_dlq: str = "aleph-notify-dlq"
    undelivered_events: str = "aleph-undelivered-job-events"
    poll_queue: str = "aleph-poll"
    poll_dlq: str = "aleph-poll-dlq"
    jobs_table: str = "aleph-jobs"
    secret_id: str = "aleph/provider-keys"


@dataclass(frozen=True)
class Resources:
    """What was created: names, URLs and ARNs."""

    names: ResourceNames
    input_prefix: str
    submit_queue_url: str
    submit_queue_arn: str
    submit_dlq_url: str
    submit_dlq_arn: str
    finalize_dlq_url: str
    finalize_dlq_arn: str
    jobs_table_arn: str
    jobs_stream_arn: str
    secret_arn: str
    notify_dlq_url: str = ""
    notify_dlq_arn: str = ""
    undelivered_events_url: str = ""
    undelivered_events_arn: str = ""
    event_bus_name: str = "default"
    poll_queue_url: str = ""
    poll_queue_arn: str = ""
    poll_dlq_url: str = ""
    poll_dlq_arn: str = ""
    pace_queue_url: str = ""
    pace_queue_arn: str = ""

    def queues(self) -> dict[str, tuple[str, str]]:
        """(URL, ARN) of each queue by its role (see ``TemplateConfig.logical_id``)."""
        return {
            "submit_queue": (self.submit_queue_url, self.submit_queue_arn),
            "submit_dlq": (self.submit_dlq_url, self.submit_dlq_arn),
            "finalize_dlq": (self.finalize_dlq_url, self.finalize_dlq_arn),
            "notify_dlq": (self.notify_dlq_url, self.notify_dlq_arn),
            "undelivered_events": (self.undelivered_events_url, self.undelivered_events_arn),
            "poll_queue": (self.poll_queue_url, self.poll_queue_arn),
            "poll_dlq": (self.poll_dlq_url, self.poll_dlq_arn),
            "pace_queue": (self.pace_queue_url, self.pace_queue_arn),
        }

    def role_values(self) -> dict[str, str]:
        """What ``!Ref`` gives for each role (see ``TemplateConfig.logical_id``)."""
        return {
            "input_bucket": self.names.input_bucket,
            "output_bucket": self.names.output_bucket,
            "jobs_table": self.names.jobs_table,
            "secret": self.names.secret_id,
            "submit_queue": self.submit_queue_url,
            "submit_dlq": self.submit_dlq_url,
            "finalize_dlq": self.finalize_dlq_url,
            "notify_dlq": self.notify_dlq_url,
            "undelivered_events": self.undelivered_events_url,
            "poll_queue": self.poll_queue_url,
            "poll_dlq": self.poll_dlq_url,
            "pace_queue": self.pace_queue_url,
        }


def provision(
    client: Callable[[str], Any],
    config: TemplateConfig,
    *,
    region: str,
    names: ResourceNames | None = None,
    secret_value: Mapping[str, Any] | None = None,
) -> Resources:
    """Create queues, buckets (with the notification), the jobs table and the secret."""
    names = names or ResourceNames()
    sqs, s3, dynamodb, secrets = client("sqs"), client("s3"), client("dynamodb"), client("secretsmanager")
    prefix = config.input_prefix or CONTRACT_INPUT_PREFIX

    submit_dlq_url, submit_dlq_arn = _queue(sqs, names.submit_dlq, {"MessageRetentionPeriod": "1209600"})
    finalize_dlq_url, finalize_dlq_arn = _queue(sqs, names.finalize_dlq, {"MessageRetentionPeriod": "1209600"})
    notify_dlq_url, notify_dlq_arn = _queue(sqs, names.notify_dlq, {"MessageRetentionPeriod": "1209600"})
    # Job events EventBridge did not take, kept whole and re-published by notify (template: UndeliveredJobEventQueue).
    undelivered_url, undelivered_arn = _queue(sqs, names.undelivered_events, {"MessageRetentionPeriod": "1209600", "VisibilityTimeout": "300"})
    # The per-job poll loop's queue (template: PollQueue), when the template has one.
    poll_url = poll_arn = poll_dlq_url = poll_dlq_arn = ""
    poll_queue = config.queue("poll_queue")
    if poll_queue is not None:
        poll_dlq_url, poll_dlq_arn = _queue(sqs, names.poll_dlq, {"MessageRetentionPeriod": "1209600"})
        poll_attributes = {"VisibilityTimeout": str(poll_queue.visibility_timeout), "MessageRetentionPeriod": str(poll_queue.message_retention_period)}
        if poll_queue.max_receive_count:
            poll_attributes["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": poll_dlq_arn, "maxReceiveCount": poll_queue.max_receive_count})
        poll_url, poll_arn = _queue(sqs, names.poll_queue, poll_attributes)
    queue: QueueConfig = config.submit_queue
    submit_url, submit_arn = _queue(
        sqs,
        names.submit_queue,
        {
            "VisibilityTimeout": str(queue.visibility_timeout),
            "MessageRetentionPeriod": str(queue.message_retention_period),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": submit_dlq_arn, "maxReceiveCount": queue.max_receive_count}),
        },
    )
    sqs.set_queue_attributes(
        QueueUrl=submit_url,
        Attributes={"Policy": json.dumps(_queue_policy(submit_arn, names.input_bucket))},
    )
    # The jobs waiting for a provider slot (template: PaceQueue), when the template has one.
    pace_url = pace_arn = ""
    pace_queue = config.queue("pace_queue")
    if pace_queue is not None:
        pace_attributes = {"VisibilityTimeout": str(pace_queue.visibility_timeout), "MessageRetentionPeriod": str(pace_queue.message_retention_period)}
        if pace_queue.max_receive_count:
            pace_attributes["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": submit_dlq_arn, "maxReceiveCount": pace_queue.max_receive_count})
        pace_url, pace_arn = _queue(sqs, names.pace_queue, pace_attributes)

    for bucket in (names.input_bucket, names.output_bucket):
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        s3.create_bucket(**kwargs)
        s3.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": True}]},
        )
        s3.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
    if config.input_bucket_versioning:
        s3.put_bucket_versioning(Bucket=names.input_bucket, VersioningConfiguration={"Status": "Enabled"})
    # moto server delivers the notifications to SQS itself (and sends s3:TestEvent now, like S3).
    s3.put_bucket_notification_configuration(
        Bucket=names.input_bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": "submit-queue",
                    "QueueArn": submit_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}},
                }
            ]
        },
    )

    table = dict(config.jobs_table or CONTRACT_JOBS_TABLE)
    ttl = table.pop("TimeToLiveSpecification", None)
    stream = dict(table.pop("StreamSpecification", None) or CONTRACT_JOBS_TABLE["StreamSpecification"])
    stream["StreamEnabled"] = True
    table.setdefault("BillingMode", "PAY_PER_REQUEST")
    described = dynamodb.create_table(TableName=names.jobs_table, StreamSpecification=stream, **table)
    dynamodb.get_waiter("table_exists").wait(TableName=names.jobs_table, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    if ttl and ttl.get("Enabled"):
        dynamodb.update_time_to_live(
            TableName=names.jobs_table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]},
        )
    description = dynamodb.describe_table(TableName=names.jobs_table)["Table"]
    stream_arn = description.get("LatestStreamArn") or described["TableDescription"].get("LatestStreamArn")

    # Job events go to the template's bus: the account's default one exists already; a named one
    # is created here (on AWS it must exist before the stack, see the EventBusName parameter).
    if config.event_bus_name != "default":
        client("events").create_event_bus(Name=config.event_bus_name)

    secret = secrets.create_secret(
        Name=names.secret_id,
        Description="Local provider keys (the simulator's)",
        SecretString=json.dumps(dict(secret_value or LOCAL_SECRET_VALUE)),
    )
    log.info("provisioned %s, %s, %s, %s", names.input_bucket, names.output_bucket, names.submit_queue, names.jobs_table)
    return Resources(
        names=names,
        input_prefix=prefix,
        submit_queue_url=submit_url,
        submit_queue_arn=submit_arn,
        submit_dlq_url=submit_dlq_url,
        submit_dlq_arn=submit_dlq_arn,
        finalize_dlq_url=finalize_dlq_url,
        finalize_dlq_arn=finalize_dlq_arn,
        jobs_table_arn=description["TableArn"],
        jobs_stream_arn=stream_arn,
        secret_arn=secret["ARN"],
        notify_dlq_url=notify_dlq_url,
        notify_dlq_arn=notify_dlq_arn,
        undelivered_events_url=undelivered_url,
        undelivered_events_arn=undelivered_arn,
        event_bus_name=config.event_bus_name,
        poll_queue_url=poll_url,
        poll_queue_arn=poll_arn,
        poll_dlq_url=poll_dlq_url,
        poll_dlq_arn=poll_dlq_arn,
        pace_queue_url=pace_url,
        pace_queue_arn=pace_arn,
    )


def _queue(sqs: Any, name: str, attributes: dict[str, str]) -> tuple[str, str]:
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return str(url), str(arn)


def _queue_policy(queue_arn: str, bucket: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AllowInputBucketNotifications",
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}},
            }
        ],
    }
