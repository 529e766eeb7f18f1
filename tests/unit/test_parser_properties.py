"""Property tests: any input to the sidecar and callback parsers gives a result or a clear
validation error, never an unhandled exception."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aleph_pipeline.errors import JobError
from aleph_pipeline.providers.base import CallbackInvalid, CallbackUnauthorized, Outcome, Provider
from aleph_pipeline.providers.crun import CrunProtocol
from aleph_pipeline.providers.kie import KieProtocol
from aleph_pipeline.providers.runware import RunwareProtocol
from aleph_pipeline.sidecar import ALLOWED_FIELDS, Sidecar, parse_sidecar
from aleph_pipeline.storage import check_url

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


# ---- every protocol's callback parser, against hostile input ------------------------------------
# Values a real provider never sends but a forger (or a broken proxy) can: superscript and
# fullwidth digits (str.isdigit() is True, int() may fail), lone surrogates, NaN and Infinity,
# numbers beyond any range, URLs that urlsplit or httpx cannot read, credentials in a URL.
HOSTILE_STRINGS = [
    "²",
    "１７００００００００",
    "\ud800",
    "a\udcffb",
    "é",
    "签名",
    "9" * 5000,
    "https://[vm.runware.ai/x.mp4",
    "https://vm．runware．ai/x.mp4",
    "https://evil＃@vm.runware.ai/x.mp4",
    "https://a\u200d.vm.runware.ai/x.mp4",
    "https://vm.runware.ai:99999/x.mp4",
    "https://vm.runware.ai:port/x.mp4",
    "https://vm.runware.ai/x\x00.mp4",
    "https://vm.runware.ai/\udc80.mp4",
    "https://user:secret@vm.runware.ai/x.mp4",
    "https://vm.runware.ai/x.mp4",
    "https://kie.test/x.mp4",
    "https://crun.test/x.mp4",
    "https://" + "a" * 70 + ".kie.test/x.mp4",
]
hostile_text = st.sampled_from(HOSTILE_STRINGS) | st.text(st.characters(codec=None, exclude_categories=()), max_size=30)
hostile_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**60), max_value=10**60)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([10**400, -(10**400), 1e308])
    | hostile_text
)
hostile_values = st.recursive(hostile_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3), max_leaves=8)
hostile_headers = st.dictionaries(
    st.sampled_from(["X-Webhook-Signature", "x-webhook-timestamp", "X-Webhook-Timestamp", "content-type"]) | st.text(max_size=10),
    hostile_text | st.sampled_from(["0", "1700000000"]),
    max_size=4,
)


def hostile_json(document: Any) -> bytes:
    # allow_nan writes NaN/Infinity tokens, which json.loads reads back; surrogates go out as \ud800.
    return json.dumps(document, allow_nan=True, default=str).encode()


kie_shaped = st.fixed_dictionaries(
    {},
    optional={
        "code": st.sampled_from([200, 501, 455]) | hostile_scalars,
        "msg": hostile_scalars,
        "taskId": hostile_scalars,
        "data": st.fixed_dictionaries(
            {},
            optional=dict.fromkeys(("result_video_url", "result_image_url", "task_id", "video_url", "image_url"), hostile_scalars),
        )
        | hostile_values,
    },
)
runware_item = st.fixed_dictionaries(
    {},
    optional={
        "taskUUID": hostile_values,
        "taskType": st.just("videoInference"),
        "status": st.sampled_from(["success", "processing", "error"]) | hostile_scalars,
        "videoURL": hostile_scalars,
        "videoUUID": hostile_scalars,
        "cost": hostile_scalars,
        "seed": hostile_scalars,
        "error": hostile_values,
    },
)
runware_shaped = (
    st.fixed_dictionaries({"data": st.lists(runware_item, max_size=3) | hostile_values})
    | st.fixed_dictionaries(
        {"errors": st.lists(st.dictionaries(st.sampled_from(["code", "message", "taskUUID"]), hostile_values), max_size=2) | hostile_values}
    )
    | runware_item
    | st.lists(runware_item, max_size=2)
)
crun_task = st.fixed_dictionaries(
    {},
    optional={
        "task_id": hostile_scalars,
        "status": st.sampled_from(["pending", "running", "success", "failed"]) | hostile_values,
        "result": st.fixed_dictionaries(
            {}, optional={"media_urls": st.lists(hostile_scalars, max_size=3) | hostile_values, "code": hostile_scalars, "message": hostile_scalars}
        )
        | hostile_values,
    },
)
crun_shaped = crun_task | st.fixed_dictionaries(
    {"code": st.sampled_from([200, 501]) | hostile_scalars, "message": hostile_scalars, "data": crun_task | hostile_values}
)


def _protocol(cls: type[Provider], provider_id: str, host: str, webhook_key: str | None = None) -> Provider:
    return cls(
        id=provider_id,
        base_url=f"https://api.{host}",
        api_key=lambda: "key",
        http=httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(500))),
        models=("aleph",),
        default_result_hosts=(host,),
        webhook_key=lambda: webhook_key,
    )


PROTOCOLS = {
    "kie": _protocol(KieProtocol, "kie", "kie.test"),
    "kie-signed": _protocol(KieProtocol, "kie", "kie.test", webhook_key="whk-secret"),
    "runware": _protocol(RunwareProtocol, "runware", "vm.runware.ai"),
    "crun": _protocol(CrunProtocol, "crun", "crun.test"),
}
SHAPES = {"kie": kie_shaped, "kie-signed": kie_shaped, "runware": runware_shaped, "crun": crun_shaped}


def assert_parsed_or_refused(protocol: Provider, raw: bytes, headers: dict[str, str]) -> None:
    """A callback parses, or is refused with CallbackInvalid (400) / CallbackUnauthorized (401);
    and every URL of a parsed one is accepted or refused by check_url with a JobError only."""
    try:
        outcome = protocol.parse_callback(raw, headers)
    except CallbackInvalid as invalid:  # CallbackUnauthorized is one too
        assert str(invalid)
        return
    assert isinstance(outcome, Outcome)
    assert outcome.task_id is None or isinstance(outcome.task_id, str)
    for item in outcome.items:
        for url in (item.video_url, item.cover_url):
            if url is None:
                continue
            try:
                check_url(url, protocol.allowed_result_hosts, allow_http=False)
            except JobError as refused:
                assert refused.code == "result_rejected"
    if outcome.state == "failed":
        assert outcome.error is not None and outcome.error.message


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
@PROPERTY_SETTINGS
@given(data=st.data())
def test_any_provider_shaped_callback_parses_or_is_refused(name: str, data: st.DataObject) -> None:
    document = data.draw(SHAPES[name])
    headers = data.draw(hostile_headers)
    assert_parsed_or_refused(PROTOCOLS[name], hostile_json(document), headers)


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
@PROPERTY_SETTINGS
@given(
    raw=st.binary(max_size=200) | st.sampled_from([b'{"code": 1' + b"0" * 5000 + b"}", b'{"code": 1e999}', b"NaN", b'"\\ud800"', b"[" * 5000]),
    headers=hostile_headers,
)
def test_any_bytes_and_headers_as_a_callback(name: str, raw: bytes, headers: dict[str, str]) -> None:
    assert_parsed_or_refused(PROTOCOLS[name], raw, headers)


def test_a_signed_kie_callback_with_hostile_signature_headers_is_unauthorized() -> None:
    body = json.dumps({"code": 200, "msg": "ok", "taskId": "t1", "data": {"result_video_url": "https://kie.test/v.mp4"}}).encode()
    for headers in (
        {"X-Webhook-Timestamp": "²", "X-Webhook-Signature": "c2ln"},
        {"X-Webhook-Timestamp": "9" * 5000, "X-Webhook-Signature": "c2ln"},
        {"X-Webhook-Timestamp": str(int(time.time())), "X-Webhook-Signature": "签名"},
        {"X-Webhook-Timestamp": str(int(time.time())), "X-Webhook-Signature": "\udcff"},
    ):
        with pytest.raises(CallbackUnauthorized):
            PROTOCOLS["kie-signed"].parse_callback(body, headers)


@PROPERTY_SETTINGS
@given(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=60)
    | st.sampled_from(HOSTILE_STRINGS)
    | st.builds(lambda tail: "https://vm.runware.ai" + tail, st.text(max_size=30))
)
def test_check_url_accepts_or_refuses_any_text(url: str) -> None:
    """check_url is the one gate before a fetch: it answers with JobError or lets through a URL
    that httpx reads with the same host, https, and no credentials."""
    hosts = ("vm.runware.ai",)
    try:
        check_url(url, hosts, allow_http=False)
    except JobError as refused:
        assert refused.code == "result_rejected"
        if ":secret@" in url:  # a password in the URL is never echoed (the text "secret" alone may be)
            assert "secret" not in refused.message
        return
    fetched = httpx.URL(url)
    assert fetched.scheme == "https"
    host = fetched.host.rstrip(".")
    assert host == "vm.runware.ai" or host.endswith(".vm.runware.ai")
    assert not fetched.userinfo
