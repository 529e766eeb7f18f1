"""The Replicate protocol adapter against canned HTTP answers (httpx's mock transport)."""

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable

import httpx
import pytest

from aleph_pipeline.errors import JobError
from aleph_pipeline.providers import _REGISTRY
from aleph_pipeline.providers.base import CallbackInvalid, CallbackUnauthorized, ProviderError, SubmitRequest, VideoInfo
from aleph_pipeline.providers.replicate import SECRET_REFETCH_INTERVAL_SECONDS, ReplicateProtocol
from aleph_pipeline.sidecar import parse_sidecar

Handler = Callable[[httpx.Request], httpx.Response]
MODEL = "runwayml/gen4-aleph"
SECRET = "whsec_" + base64.b64encode(b"the-account-signing-key-32-bytes").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"some-other-accounts-signing-key!").decode()
PREDICTION = {"id": "ufawqhfynnddngldkgtslldrkq", "status": "succeeded", "output": "https://replicate.delivery/xezq/abc/out.mp4", "error": None}


def sign(body: bytes, secret: str = SECRET, *, message_id: str = "msg_1", timestamp: int | None = None) -> dict[str, str]:
    """Standard Webhooks headers for ``body``, written from the specification."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{message_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": message_id, "webhook-timestamp": stamp, "webhook-signature": "v1," + base64.b64encode(digest).decode()}


class Account:
    """Replicate's side: the secret endpoint (counting fetches) and whatever else ``other`` answers."""

    def __init__(self, secret: str = SECRET, other: Handler | None = None) -> None:
        self.secret = secret
        self.other = other
        self.secret_fetches = 0
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        if request.url.path == "/v1/webhooks/default/secret":
            self.secret_fetches += 1
            assert request.headers["authorization"] == "Bearer r8_secret"
            return httpx.Response(200, json={"key": self.secret})
        return self.other(request) if self.other else httpx.Response(500)


def make(account: Account) -> ReplicateProtocol:
    return ReplicateProtocol(
        id="replicate",
        base_url="https://api.replicate.test",
        api_key=lambda: "r8_secret",
        http=httpx.Client(transport=httpx.MockTransport(account)),
        models=(MODEL,),
        default_result_hosts=("replicate.delivery",),
    )


def request(document: dict[str, object] | None = None, refs: tuple[str, ...] = ()) -> SubmitRequest:
    sidecar, _ = parse_sidecar(json.dumps(document or {"prompt": "snow"}).encode())
    return SubmitRequest("j" * 32, sidecar, MODEL, "https://in.test/v.mp4", refs, "https://cb.test/callbacks/replicate/j?token=t")


def body_of(prediction: dict[str, object] | None = None) -> bytes:
    return json.dumps(prediction or PREDICTION).encode()


def test_registered_with_its_base_url_model_and_hosts() -> None:
    base_url, constructor, models, hosts = _REGISTRY["replicate"]
    assert (base_url, constructor, models, hosts) == ("https://api.replicate.com", ReplicateProtocol, (MODEL,), ("replicate.delivery",))


# ---- submit and intake --------------------------------------------------------------------------


def test_submit_creates_a_prediction_with_the_webhook_for_completion_only() -> None:
    account = Account(other=lambda req: httpx.Response(201, json={"id": "p1", "status": "starting"}))
    document = {"prompt": "snow", "aspectRatio": "9:16", "seed": 7, "referenceImages": ["r.png"]}
    assert make(account).submit(request(document, ("https://in.test/r.png",))) == "p1"
    [sent] = account.seen
    assert (sent.method, str(sent.url)) == ("POST", "https://api.replicate.test/v1/models/runwayml/gen4-aleph/predictions")
    assert sent.headers["authorization"] == "Bearer r8_secret"
    assert json.loads(sent.content) == {
        "input": {"prompt": "snow", "video": "https://in.test/v.mp4", "aspect_ratio": "9:16", "seed": 7, "reference_image": "https://in.test/r.png"},
        "webhook": "https://cb.test/callbacks/replicate/j?token=t",
        "webhook_events_filter": ["completed"],
    }


@pytest.mark.parametrize(
    ("status", "kind"),
    [(422, "refused"), (401, "refused"), (402, "refused"), (429, "retryable"), (500, "ambiguous"), (503, "ambiguous")],
)
def test_submit_failures_are_classified_by_status(status: int, kind: str) -> None:
    problem = {"title": "Input validation failed", "detail": "- input: Additional property foo is not allowed", "status": status}
    account = Account(other=lambda req: httpx.Response(status, json=problem))
    with pytest.raises(ProviderError) as caught:
        make(account).submit(request())
    assert caught.value.kind == kind
    assert "Additional property foo is not allowed" in caught.value.message


def test_a_created_prediction_without_an_id_is_ambiguous() -> None:
    with pytest.raises(ProviderError) as caught:
        make(Account(other=lambda req: httpx.Response(201, json={"status": "starting"}))).submit(request())
    assert caught.value.kind == "ambiguous"


@pytest.mark.parametrize(
    ("document", "code", "words"),
    [
        ({"prompt": "x", "numberResults": 2}, "unsupported_option", "`numberResults`"),
        ({"prompt": "x", "referenceImages": ["a.png", "b.png"]}, "unsupported_option", "one reference image"),
        ({"prompt": "x" * 1001}, "invalid_sidecar", "at most 1000"),
        ({"prompt": "x", "providerOptions": {"duration": 10}}, "unsupported_option", "`duration`"),
        ({"prompt": "x", "providerOptions": {"video": "https://elsewhere.test/v.mp4"}}, "invalid_sidecar", "`video`"),
    ],
)
def test_intake_refuses_what_the_model_cannot_take(document: dict[str, object], code: str, words: str) -> None:
    sidecar, _ = parse_sidecar(json.dumps(document).encode())
    with pytest.raises(JobError) as caught:
        make(Account()).check(sidecar, MODEL, None)
    assert caught.value.code == code
    assert words in caught.value.message


def test_intake_refuses_a_video_of_16_mib_or_more_and_other_containers() -> None:
    sidecar, _ = parse_sidecar(b'{"prompt": "x"}')
    provider = make(Account())
    provider.check(sidecar, MODEL, VideoInfo("mp4", 16 * 2**20))
    with pytest.raises(JobError) as too_large:
        provider.check(sidecar, MODEL, VideoInfo("mp4", 16 * 2**20 + 1))
    assert too_large.value.code == "video_too_large"
    with pytest.raises(JobError) as wrong_format:
        provider.check(sidecar, MODEL, VideoInfo("avi", 1000))
    assert wrong_format.value.code == "video_unsupported"
    assert "first 5 s" in (ReplicateProtocol.docs.limits if ReplicateProtocol.docs else "")


def test_provider_options_set_documented_inputs() -> None:
    body = make(Account()).request_body(request({"prompt": "x", "providerOptions": {"aspect_ratio": "1:1", "seed": 3}}))
    assert body["input"] == {"prompt": "x", "video": "https://in.test/v.mp4", "aspect_ratio": "1:1", "seed": 3}


# ---- poll ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "state", "urls", "error"),
    [
        ({"id": "p1", "status": "starting", "output": None}, "running", (), None),
        ({"id": "p1", "status": "processing", "output": None}, "running", (), None),
        ({"id": "p1", "status": "succeeded", "output": "https://replicate.delivery/a.mp4"}, "succeeded", ("https://replicate.delivery/a.mp4",), None),
        ({"id": "p1", "status": "succeeded", "output": ["https://a.replicate.delivery/1.mp4"]}, "succeeded", ("https://a.replicate.delivery/1.mp4",), None),
        ({"id": "p1", "status": "failed", "error": "E005: content flagged"}, "failed", (), "E005: content flagged"),
        ({"id": "p1", "status": "canceled", "error": None}, "failed", (), "the prediction was canceled at replicate"),
    ],
)
def test_poll_reads_the_prediction(prediction: dict[str, object], state: str, urls: tuple[str, ...], error: str | None) -> None:
    account = Account(other=lambda req: httpx.Response(200, json=prediction))
    outcome = make(account).poll("p1")
    assert str(account.seen[0].url) == "https://api.replicate.test/v1/predictions/p1"
    assert (outcome.state, outcome.task_id, outcome.video_urls) == (state, "p1", urls)
    assert (outcome.error.message if outcome.error else None) == error
    if outcome.error:
        assert not outcome.error.retryable


def test_poll_of_a_success_without_output_is_retried_and_unknown_is_refused() -> None:
    with pytest.raises(ProviderError) as incomplete:
        make(Account(other=lambda req: httpx.Response(200, json={"id": "p1", "status": "succeeded", "output": None}))).poll("p1")
    assert incomplete.value.kind == "retryable"
    with pytest.raises(ProviderError) as missing:
        make(Account(other=lambda req: httpx.Response(404, json={"detail": "Not found.", "status": 404}))).poll("p1")
    assert (missing.value.kind, missing.value.message) == ("refused", "replicate: Not found.")


# ---- webhook signatures -------------------------------------------------------------------------


def test_a_signed_webhook_is_read_and_the_secret_fetched_once() -> None:
    account = Account()
    provider = make(account)
    outcome = provider.parse_callback(body_of(), sign(body_of()))
    assert (outcome.state, outcome.task_id, outcome.video_urls) == ("succeeded", PREDICTION["id"], (PREDICTION["output"],))
    failed = body_of({"id": "p2", "status": "failed", "error": "boom"})
    assert provider.parse_callback(failed, sign(failed, message_id="msg_2")).state == "failed"
    assert account.secret_fetches == 1  # cached


def test_header_names_are_case_insensitive() -> None:
    headers = {name.title(): value for name, value in sign(body_of()).items()}
    assert make(Account()).parse_callback(body_of(), headers).state == "succeeded"


def test_a_wrong_secret_is_refused_after_one_refetch_and_not_refetched_again_soon() -> None:
    account = Account()
    provider = make(account)
    provider.parse_callback(body_of(), sign(body_of()))  # cached now
    provider._signing_key_at -= SECRET_REFETCH_INTERVAL_SECONDS  # cached long enough ago to be refetched
    with pytest.raises(CallbackUnauthorized, match="does not match"):
        provider.parse_callback(body_of(), sign(body_of(), OTHER_SECRET))
    assert account.secret_fetches == 2
    with pytest.raises(CallbackUnauthorized, match="does not match"):
        provider.parse_callback(body_of(), sign(body_of(), OTHER_SECRET))
    assert account.secret_fetches == 2  # forged webhooks cannot make us fetch it again and again


def test_a_rotated_secret_is_refetched_once_and_then_accepted() -> None:
    account = Account()
    provider = make(account)
    provider.parse_callback(body_of(), sign(body_of()))
    provider._signing_key_at -= SECRET_REFETCH_INTERVAL_SECONDS
    account.secret = OTHER_SECRET  # rotated at Replicate
    assert provider.parse_callback(body_of(), sign(body_of(), OTHER_SECRET)).state == "succeeded"
    assert account.secret_fetches == 2


def test_a_tampered_body_is_refused() -> None:
    headers = sign(body_of())
    forged = body_of({**PREDICTION, "output": "https://replicate.delivery/someone-elses.mp4"})
    with pytest.raises(CallbackUnauthorized, match="does not match"):
        make(Account()).parse_callback(forged, headers)


@pytest.mark.parametrize("age", [301, -301])
def test_a_stale_or_future_timestamp_is_refused_even_when_correctly_signed(age: int) -> None:
    account = Account()
    headers = sign(body_of(), timestamp=int(time.time()) - age)
    with pytest.raises(CallbackUnauthorized, match="too old or in the future"):
        make(account).parse_callback(body_of(), headers)
    assert account.secret_fetches == 0  # refused before any key is needed


def test_several_signatures_of_which_one_is_valid_are_accepted() -> None:
    good = sign(body_of())
    bad = sign(body_of(), OTHER_SECRET)["webhook-signature"]
    headers = {**good, "webhook-signature": f"{bad} v2,bm90LWEtdjE= v1,!!notbase64 {good['webhook-signature']}"}
    assert make(Account()).parse_callback(body_of(), headers).state == "succeeded"
    with pytest.raises(CallbackUnauthorized):
        make(Account()).parse_callback(body_of(), {**good, "webhook-signature": f"{bad} v1,!!notbase64"})


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers_are_refused(missing: str) -> None:
    headers = {name: value for name, value in sign(body_of()).items() if name != missing}
    with pytest.raises(CallbackUnauthorized, match="not signed"):
        make(Account()).parse_callback(body_of(), headers)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"webhook-timestamp": "²"}, "not a Unix time"),
        ({"webhook-signature": "v2,c2lnbmF0dXJl"}, "no v1 signature"),
        ({"webhook-id": "msg_\ud800"}, "cannot have been signed"),
    ],
)
def test_malformed_signature_headers_are_refused(change: dict[str, str], words: str) -> None:
    with pytest.raises(CallbackUnauthorized, match=words):
        make(Account()).parse_callback(body_of(), {**sign(body_of()), **change})


def test_a_signed_body_that_is_not_a_prediction_is_invalid_not_unauthorized() -> None:
    for body in (b"[1, 2]", b"not json", body_of({"id": "p1", "status": "exploded"})):
        with pytest.raises(CallbackInvalid) as caught:
            make(Account()).parse_callback(body, sign(body))
        assert not isinstance(caught.value, CallbackUnauthorized)


def test_a_secret_that_cannot_be_fetched_is_a_provider_error_naming_it_without_the_key() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"detail": "Service unavailable", "status": 503})

    provider = make(Account())
    provider.http = httpx.Client(transport=httpx.MockTransport(down))
    with pytest.raises(ProviderError) as caught:
        provider.parse_callback(body_of(), sign(body_of()))
    assert caught.value.kind == "retryable"
    assert "webhook signing secret could not be fetched" in caught.value.message
    assert "r8_secret" not in str(caught.value)
