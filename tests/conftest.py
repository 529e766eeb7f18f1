"""Shared test setup: fake AWS credentials, handler settings, and a moto server on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from local.client import moto_server as start_moto_server

# Before anything imports boto3 or the settings: no test may reach a real AWS account.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "aleph-pipeline-tests",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "JOBS_TABLE_NAME": "aleph-jobs",
        "INPUT_BUCKET_NAME": "aleph-input",
        "OUTPUT_BUCKET_NAME": "aleph-output",
        "CALLBACK_API_URL": "https://callbacks.example.test",
        "PROVIDER_SECRET_ID": "aleph/provider-keys",
    }
)
os.environ.pop("AWS_PROFILE", None)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server subprocess; yields its URL. Tests reach it over real HTTP."""
    with start_moto_server() as url:
        yield url
