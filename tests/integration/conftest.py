"""Handlers and domain code in-process against moto server: fresh resources per test."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from aleph_pipeline import clients, jobs, storage
from aleph_pipeline.config import get_settings
from aleph_pipeline.providers import PROVIDER_IDS, get_provider

MP4_HEAD = b"\x00\x00\x00\x18ftypisom"  # the start of an MP4: what finalize checks a result against


def clear_caches() -> None:
    from aws_lambda_powertools.utilities import parameters

    for cached in (get_settings, storage.s3_client, jobs._table, get_provider, clients.client):
        cached.cache_clear()
    parameters.clear_caches()
    parameters.base.DEFAULT_PROVIDERS.clear()


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    suffix = uuid.uuid4().hex[:8]
    names = {"table_name": f"jobs-{suffix}", "input": "aleph-input", "output": f"out-{suffix}", "secret": f"keys-{suffix}"}
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("JOBS_TABLE_NAME", names["table_name"])
    monkeypatch.setenv("OUTPUT_BUCKET_NAME", names["output"])
    monkeypatch.setenv("PROVIDER_SECRET_ID", names["secret"])
    # Closed ports: a provider call is refused at once and never leaves the machine.
    monkeypatch.setenv("PROVIDER_ENDPOINTS", json.dumps(dict.fromkeys(PROVIDER_IDS, "http://127.0.0.1:9")))
    clear_caches()
    s3 = boto3.client("s3", endpoint_url=moto_server)
    for bucket in (names["input"], names["output"]):
        s3.create_bucket(Bucket=bucket)
    boto3.client("secretsmanager", endpoint_url=moto_server).create_secret(
        Name=names["secret"], SecretString=json.dumps({provider: f"key-{provider}" for provider in PROVIDER_IDS})
    )
    table = boto3.resource("dynamodb", endpoint_url=moto_server).create_table(
        TableName=names["table_name"],
        KeySchema=[{"AttributeName": "jobId", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "jobId", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    yield {"s3": s3, "table": table, **names}
    clear_caches()
