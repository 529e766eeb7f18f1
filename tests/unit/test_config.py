"""Settings from the environment: each field's type, default, bounds and checks, the errors that
name the variable, and the marks the local stack's environment guard reads."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import pytest

from aleph_pipeline import config
from aleph_pipeline.config import WIRING, Settings, SettingsError, environment_values, get_settings

REQUIRED = {"JOBS_TABLE_NAME": "jobs", "INPUT_BUCKET_NAME": "in", "OUTPUT_BUCKET_NAME": "out"}


def read(**variables: str) -> Settings:
    return Settings.model_validate(environment_values({**REQUIRED, **variables}))


def test_the_defaults_with_only_the_required_variables() -> None:
    settings = read()
    assert (settings.jobs_table_name, settings.input_bucket_name, settings.output_bucket_name) == ("jobs", "in", "out")
    assert settings.input_prefix == "incoming/"
    assert settings.input_cleanup == "none"
    assert settings.presigned_url_ttl_seconds == 3600
    assert settings.max_result_bytes == 2 * 1024**3
    assert settings.daily_budget_usd is None and settings.monthly_budget_usd is None
    assert settings.confirm_results_by_polling is True and settings.allow_http_result_urls is False
    assert settings.provider_read_timeout_seconds == 30.0
    assert settings.result_hosts == {} and settings.provider_prices == {} and settings.provider_concurrency == {}
    assert settings.event_bus_name == "default" and settings.stack_name == "aleph"
    assert settings.model_fields_set == {"jobs_table_name", "input_bucket_name", "output_bucket_name"}


def test_each_read_gets_its_own_dict() -> None:
    assert read().result_hosts is not read().result_hosts


@pytest.mark.parametrize(
    ("variable", "text", "field", "value"),
    [
        ("PRESIGNED_URL_TTL_SECONDS", " 120 ", "presigned_url_ttl_seconds", 120),
        ("MAX_RESULT_BYTES", "10.0", "max_result_bytes", 10),
        ("POLL_BACKOFF_FACTOR", "2", "poll_backoff_factor", 2.0),
        ("PROVIDER_READ_TIMEOUT_SECONDS", "0.5", "provider_read_timeout_seconds", 0.5),
        ("DAILY_BUDGET_USD", "12.5", "daily_budget_usd", 12.5),
        ("MONTHLY_BUDGET_USD", "  ", "monthly_budget_usd", None),
        ("ALLOW_HTTP_RESULT_URLS", "Yes", "allow_http_result_urls", True),
        ("CONFIRM_RESULTS_BY_POLLING", "off", "confirm_results_by_polling", False),
        ("INPUT_CLEANUP", "delete", "input_cleanup", "delete"),
        ("INPUT_PREFIX", "/uploads", "input_prefix", "uploads/"),
        ("INPUT_PREFIX", "", "input_prefix", ""),
        ("CALLBACK_API_URL", "https://api.example//", "callback_api_url", "https://api.example"),
        ("PROVIDER_PRICES", '{"kie": {"perJob": 0.5, "perSecond": "0.01"}}', "provider_prices", {"kie": {"perJob": 0.5, "perSecond": 0.01}}),
        ("RESULT_HOSTS", '{"kie": ["cdn.example"]}', "result_hosts", {"kie": ["cdn.example"]}),
        ("PROVIDER_RATE_LIMITS", '{"kie": "20/10", "crun": "none", "runware": ""}', "provider_rate_limits", {"kie": "20/10", "crun": "none", "runware": ""}),
        ("PROVIDER_CONCURRENCY", '{"crun": 4, "runway": "none"}', "provider_concurrency", {"crun": 4, "runway": None}),
        ("POLL_JITTER", "0", "poll_jitter", 0.0),
    ],
)
def test_a_variable_is_read_as_its_field_type(variable: str, text: str, field: str, value: Any) -> None:
    settings = read(**{variable: text})
    assert getattr(settings, field) == value
    assert type(getattr(settings, field)) is type(value)
    assert field in settings.model_fields_set


@pytest.mark.parametrize(
    ("variable", "text", "problem"),
    [
        ("PRESIGNED_URL_TTL_SECONDS", "59", "must be at least 60, not 59"),
        ("PRESIGNED_URL_TTL_SECONDS", str(7 * 24 * 3600 + 1), "must be at most 604800"),
        ("PAIRING_TIMEOUT_SECONDS", "0", "must be at least 1"),
        ("MAX_RESULT_BYTES", "1.5", "must be a whole number, not '1.5'"),
        ("SUBMIT_MAX_ATTEMPTS", "four", "must be a whole number"),
        ("PROVIDER_READ_TIMEOUT_SECONDS", "0", "must be more than 0"),
        ("PROVIDER_READ_TIMEOUT_SECONDS", "301", "must be at most 300"),
        ("POLL_JITTER", "1", "must be less than 1"),
        ("POLL_FIRST_DELAY_SECONDS", "901", "must be at most 900"),
        ("RECONCILE_BATCH_SIZE", "1001", "must be at most 1000"),
        ("DAILY_BUDGET_USD", "-1", "must be at least 0"),
        ("MONTHLY_BUDGET_USD", "lots", "must be a number, not 'lots'"),
        ("PACE_MAX_WAIT_SECONDS", "-0.5", "must be at least 0"),
        ("ALLOW_HTTP_RESULT_URLS", "maybe", "must be true or false"),
        ("INPUT_CLEANUP", "shred", "must be one of 'none', 'tag', 'delete', not 'shred'"),
        ("RESULT_HOSTS", '{"kie": "cdn.example"}', "`kie`: must be a JSON list"),
        ("RESULT_HOSTS", '["cdn.example"]', "must be a JSON object"),
        ("PROVIDER_ENDPOINTS", '{"kie": 9}', "`kie`: must be text"),
        ("PROVIDER_PRICES", '{"kie": {"perJob": "cheap"}}', "`kie`: `perJob`: must be a number"),
        ("PROVIDER_RATE_LIMITS", '{"kie": "20 per 10"}', "`kie` must be `<tasks>/<seconds>`"),
        ("PROVIDER_CONCURRENCY", '{"crun": 0}', "provider_concurrency: `crun` must be a whole number of tasks (at least 1) or `none`, not `0`"),
        ("PROVIDER_CONCURRENCY", '{"crun": "many"}', "`crun`: must be a whole number"),
    ],
)
def test_an_invalid_variable_is_refused_naming_it_and_the_problem(variable: str, text: str, problem: str) -> None:
    with pytest.raises(SettingsError) as raised:
        read(**{variable: text})
    assert f"{variable} ({variable.lower()}) " in str(raised.value)
    assert problem in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_every_problem_is_named_at_once_and_a_missing_required_variable_too() -> None:
    environ = {"INPUT_BUCKET_NAME": "in", "OUTPUT_BUCKET_NAME": "out", "POLL_JITTER": "2", "INPUT_CLEANUP": "x"}
    with pytest.raises(SettingsError) as raised:
        Settings.model_validate(environment_values(environ))
    message = str(raised.value)
    assert "JOBS_TABLE_NAME (jobs_table_name) is required and not set" in message
    assert "POLL_JITTER (poll_jitter)" in message and "INPUT_CLEANUP (input_cleanup)" in message


def test_unknown_variables_are_ignored_and_names_are_read_in_any_case() -> None:
    environ = {"jobs_table_name": "j", "Input_Bucket_Name": "i", "OUTPUT_BUCKET_NAME": "o", "PATH": "/bin", "UNRELATED": "x"}
    settings = Settings.model_validate(environment_values(environ))
    assert (settings.jobs_table_name, settings.input_bucket_name) == ("j", "i")


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        read().stack_name = "other"  # type: ignore[misc]


def test_the_wiring_marks_name_the_stack_resources() -> None:
    wiring = {name for name, info in Settings.model_fields.items() if info.json_schema_extra == WIRING}
    assert wiring == {
        "jobs_table_name",
        "input_bucket_name",
        "output_bucket_name",
        "callback_api_url",
        "provider_secret_id",
        "submit_dead_letter_queue_url",
        "event_bus_name",
        "stack_name",
        "undelivered_event_queue_url",
        "poll_queue_url",
        "pace_queue_url",
    }
    assert Settings.model_fields["result_hosts"].annotation == dict[str, list[str]]
    assert Settings.model_fields["presigned_url_ttl_seconds"].bounds == {"ge": 60, "le": 7 * 24 * 3600}


def test_the_local_stack_guard_tells_a_defaulted_field_from_a_given_one() -> None:
    # local/lambda_worker.EnvironmentWatch reads the fields set under pydantic's name.
    settings = read(POLL_QUEUE_URL="https://sqs.example/q")
    assert "poll_queue_url" in object.__getattribute__(settings, "__pydantic_fields_set__")
    assert "undelivered_event_queue_url" not in object.__getattribute__(settings, "__pydantic_fields_set__")


def test_get_settings_reads_the_process_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in REQUIRED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STACK_NAME", "first")
    get_settings.cache_clear()
    try:
        assert get_settings().stack_name == "first"
        monkeypatch.setenv("STACK_NAME", "second")
        assert get_settings() is get_settings() and get_settings().stack_name == "first"
    finally:
        get_settings.cache_clear()


def test_reading_settings_imports_no_pydantic() -> None:
    code = "import sys, aleph_pipeline.config; print(any(m.split('.')[0] == 'pydantic' for m in sys.modules))"
    layer = config.__file__.rsplit("/aleph_pipeline/", 1)[0]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True, cwd=layer)
    assert done.stdout.strip() == "False"
