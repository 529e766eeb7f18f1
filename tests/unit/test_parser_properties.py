"""Property tests: any input to the sidecar and callback parsers gives a result or a clear
validation error, never an unhandled exception."""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aleph_pipeline.errors import JobError
from aleph_pipeline.providers.base import CallbackInvalid, Outcome
from aleph_pipeline.providers.kie import KieProtocol
from aleph_pipeline.sidecar import ALLOWED_FIELDS, Sidecar, parse_sidecar

json_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
field_names = st.sampled_from([*ALLOWED_FIELDS, "safety.mode", "unknown", "Prompt", ""])
sidecar_like = st.dictionaries(field_names | st.text(max_size=12), json_values, max_size=8)
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_sidecar_or_clear_error(raw: bytes) -> None:
    try:
        sidecar, document = parse_sidecar(raw)
    except JobError as error:
        assert error.code in {"invalid_json", "invalid_sidecar", "sidecar_too_large"}
        assert error.message
        assert error.stage == "intake"
        return
    assert isinstance(sidecar, Sidecar)
    assert isinstance(document, dict)
    assert sidecar.prompt.strip()


@PROPERTY_SETTINGS
@given(st.binary(max_size=300))
def test_any_bytes_as_a_sidecar(raw: bytes) -> None:
    assert_sidecar_or_clear_error(raw)


@PROPERTY_SETTINGS
@given(sidecar_like)
def test_any_json_object_as_a_sidecar(document: dict[str, Any]) -> None:
    assert_sidecar_or_clear_error(json.dumps(document).encode())


@PROPERTY_SETTINGS
@given(json_values)
def test_any_json_value_as_a_sidecar(value: Any) -> None:
    assert_sidecar_or_clear_error(json.dumps(value).encode())


KIE = KieProtocol(
    id="kie",
    base_url="https://api.kie.test",
    api_key=lambda: "key",
    http=httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(500))),
    models=("aleph",),
    default_result_hosts=("kie.test",),
)
callback_like = st.fixed_dictionaries(
    {},
    optional={
        "code": st.sampled_from([200, 400, 500]) | json_scalars,
        "msg": json_scalars,
        "taskId": json_scalars,
        "data": st.none()
        | st.dictionaries(st.sampled_from(["result_video_url", "result_image_url", "task_id", "video_url", "image_url", "video_id"]), json_scalars)
        | json_values,
    },
)


def assert_outcome_or_invalid(raw: bytes) -> None:
    try:
        outcome = KIE.parse_callback(raw, {})
    except CallbackInvalid as invalid:
        assert str(invalid)
        return
    assert isinstance(outcome, Outcome)
    if outcome.state == "succeeded":
        assert outcome.video_urls
        assert all(isinstance(url, str) and url for url in outcome.video_urls)
    if outcome.state == "failed":
        assert outcome.error is not None
        assert outcome.error.message


@PROPERTY_SETTINGS
@given(st.binary(max_size=300))
def test_any_bytes_as_a_kie_callback(raw: bytes) -> None:
    assert_outcome_or_invalid(raw)


@PROPERTY_SETTINGS
@given(callback_like)
def test_any_kie_shaped_callback(document: dict[str, Any]) -> None:
    assert_outcome_or_invalid(json.dumps(document).encode())
