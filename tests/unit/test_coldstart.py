"""The cold path: what the benchmark measures of each handler, and what a cold invocation imports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aleph_pipeline.config import Settings, SettingsError, environment_values
from bench import coldstart
from bench.coldstart import HANDLER_ENV, HANDLERS, cold_path, function_level_imports
from local.client import REPO_ROOT


def test_every_handler_is_measured() -> None:
    assert set(HANDLERS) == {"submit", "callback", "finalize", "reconcile", "notify", "poll", "status"}
    assert set(coldstart.targets()) == {"boto3", *HANDLERS}


def test_the_cold_path_adds_what_a_first_invocation_imports() -> None:
    source = """
import json
from aws_lambda_powertools import Logger

def handler(event, context):
    from aleph_pipeline.intake import handle_object_created
    import aleph_pipeline.errors
    from . import sibling
    from aleph_pipeline.intake import object_created_records
"""
    assert function_level_imports(source) == ["aleph_pipeline.intake", "aleph_pipeline.errors"]
    for handler in HANDLERS:
        path = cold_path(handler)
        assert path[0] == "app"
        assert path[-1] == "boto3"


@pytest.mark.parametrize("handler", HANDLERS)
def test_a_cold_invocation_does_not_import_pydantic_settings(handler: str) -> None:
    # pydantic-settings doubled what the Settings model cost to import; it may still be installed
    # in the development environment, so what counts is that nothing imports it.
    code = (
        "import sys\n"
        "sys.path[:0] = sys.argv[2:]\n"
        "for module in sys.argv[1].split(','): __import__(module)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic_settings'))\n"
    )
    paths = [str(REPO_ROOT / "functions" / handler), str(REPO_ROOT / "layers" / "domain")]
    env = {"PATH": os.environ.get("PATH", ""), **HANDLER_ENV}
    done = subprocess.run([sys.executable, "-c", code, ",".join(cold_path(handler)), *paths], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


# What each handler's cold path must not import: pydantic's model machinery nowhere (the sidecar is
# validated without it, and the status API's answers are plain dicts, its models only document
# them); httpx only where a provider is called or a result downloaded.
NOT_IMPORTED = {
    "callback": {"pydantic"},
    "finalize": {"pydantic"},
    "notify": {"pydantic", "httpx"},
    "poll": {"pydantic"},
    "reconcile": {"pydantic"},
    "status": {"pydantic", "httpx"},
    "submit": {"pydantic"},
}


@pytest.mark.parametrize("handler", sorted(NOT_IMPORTED))
def test_a_cold_invocation_imports_only_the_libraries_its_handler_uses(handler: str) -> None:
    code = (
        "import sys\n"
        "sys.path[:0] = sys.argv[2:]\n"
        "for module in sys.argv[1].split(','): __import__(module)\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    paths = [str(REPO_ROOT / "functions" / handler), str(REPO_ROOT / "layers" / "domain")]
    env = {"PATH": os.environ.get("PATH", ""), **HANDLER_ENV}
    done = subprocess.run([sys.executable, "-c", code, ",".join(cold_path(handler)), *paths], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = set(done.stdout.split())
    assert "aleph_pipeline" in imported and "boto3" in imported
    assert not imported & NOT_IMPORTED[handler]


def _settings(environ: dict[str, str]) -> Settings:
    return Settings.model_validate(environment_values(environ))


def test_settings_read_each_field_from_its_variable_in_any_case() -> None:
    settings = _settings(
        {
            **HANDLER_ENV,
            "input_prefix": "/uploads",
            "RESULT_HOSTS": '{"kie": ["cdn.example"]}',
            "Provider_Endpoints": '{"kie": "http://127.0.0.1:9"}',
            "ALLOW_HTTP_RESULT_URLS": "true",
            "CALLBACK_API_URL": "https://api.example/",
            "UNRELATED": "ignored",
        }
    )
    assert settings.input_prefix == "uploads/"
    assert settings.result_hosts == {"kie": ["cdn.example"]}
    assert settings.provider_endpoints == {"kie": "http://127.0.0.1:9"}
    assert settings.allow_http_result_urls is True
    assert settings.callback_api_url == "https://api.example"
    assert settings.presigned_url_ttl_seconds == 3600
    # The local stack's env guard tells a defaulted field from a given one by the fields set.
    assert "poll_queue_url" not in settings.model_fields_set
    assert {"jobs_table_name", "result_hosts", "input_prefix"} <= settings.model_fields_set


def test_a_structured_variable_that_is_not_json_is_named_without_its_value() -> None:
    with pytest.raises(ValueError, match="RESULT_HOSTS must hold JSON") as raised:
        environment_values({**HANDLER_ENV, "RESULT_HOSTS": "kie=secret-looking-value"})
    assert "secret-looking-value" not in str(raised.value)


def test_a_missing_or_invalid_variable_fails_validation() -> None:
    without_table = {name: value for name, value in HANDLER_ENV.items() if name != "JOBS_TABLE_NAME"}
    with pytest.raises(SettingsError, match="jobs_table_name"):
        _settings(without_table)
    with pytest.raises(SettingsError, match="presigned_url_ttl_seconds"):
        _settings({**HANDLER_ENV, "PRESIGNED_URL_TTL_SECONDS": "5"})
