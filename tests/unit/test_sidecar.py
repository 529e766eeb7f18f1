import json
import re

import pytest

from aleph_pipeline.errors import JobError
from aleph_pipeline.sidecar import ALLOWED_FIELDS, MAX_SIDECAR_BYTES, parse_sidecar


def error_of(raw: bytes) -> JobError:
    with pytest.raises(JobError) as caught:
        parse_sidecar(raw)
    return caught.value


def test_every_documented_field_is_accepted() -> None:
    document = {
        "prompt": "make it snow",
        "provider": "runware",
        "model": "runway:aleph@2.0",
        "video": "clip.mp4",
        "referenceImages": ["ref.png"],
        "frameImages": ["a.png", {"image": "b.png", "frame": "last"}, {"image": "c.png", "timestamp": 2.5}],
        "aspectRatio": "16:9",
        "width": 1280,
        "height": 720,
        "seed": 4294967295,
        "numberResults": 4,
        "outputFormat": "webm",
        "outputQuality": 99,
        "watermark": "team",
        "publicFigureThreshold": "low",
        "safety": {"checkContent": True, "mode": "fast"},
        "providerOptions": {"uploadCn": False},
        "metadata": {"shot": 1},
    }
    sidecar, received = parse_sidecar(json.dumps(document).encode())
    assert received == document
    assert sidecar.output_format == "WEBM"
    assert sidecar.given_fields == set(document)
    assert set(ALLOWED_FIELDS) == set(document) | {"providers"}  # a chain replaces `provider`: never both in one sidecar


def test_unknown_field_is_named_with_the_allowed_ones() -> None:
    error = error_of(b'{"prompt": "x", "promt": "y"}')
    assert error.code == "invalid_sidecar"
    assert "unknown field `promt`" in error.message
    assert "allowed fields: prompt, provider" in error.message


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        (b"", "invalid_json", "empty"),
        (b"   \n", "invalid_json", "empty"),
        (b"{prompt: 1}", "invalid_json", "line 1 column 2"),
        (b"\xff\xfe", "invalid_json", "not UTF-8"),
        (b"[]", "invalid_sidecar", "not an array"),
        (b'"prompt"', "invalid_sidecar", "not a string"),
        (b"{}", "invalid_sidecar", "missing required field `prompt`"),
        (b'{"prompt": ""}', "invalid_sidecar", "`prompt`"),
        (b'{"prompt": "   "}', "invalid_sidecar", "`prompt`"),
        (b'{"prompt": 5}', "invalid_sidecar", "`prompt`"),
        (b'{"prompt": "x", "seed": true}', "invalid_sidecar", "`seed`"),
        (b'{"prompt": "x", "seed": 1.5}', "invalid_sidecar", "`seed`"),
        (b'{"prompt": "x", "seed": -1}', "invalid_sidecar", "`seed`"),
        (b'{"prompt": "x", "numberResults": 5}', "invalid_sidecar", "`numberResults`"),
        (b'{"prompt": "x", "provider": "openai"}', "invalid_sidecar", "`provider`"),
        (b'{"prompt": "x", "aspectRatio": "2:1"}', "invalid_sidecar", "`aspectRatio`"),
        (b'{"prompt": "x", "outputFormat": "gif"}', "invalid_sidecar", "`outputFormat`"),
        (b'{"prompt": "x", "safety": {"mode": "all"}}', "invalid_sidecar", "`safety.mode`"),
        (b'{"prompt": "x", "frameImages": [{"image": "a", "frame": "first", "timestamp": 1}]}', "invalid_sidecar", "not both"),
        (b'{"prompt": "x", "referenceImages": []}', "invalid_sidecar", "`referenceImages`"),
        (b'{"prompt": "x", "aspect_ratio": "16:9"}', "invalid_sidecar", "unknown field `aspect_ratio`"),
        (b'{"prompt": "x", "seed": "42"}', "invalid_sidecar", "`seed`"),
        (b'{"prompt": "x", "numberResults": "2"}', "invalid_sidecar", "`numberResults`"),
    ],
)
def test_bad_sidecars_name_the_problem(raw: bytes, code: str, words: str) -> None:
    error = error_of(raw)
    assert error.code == code
    assert words in error.message
    assert error.stage == "intake"
    assert error.hint


def test_byte_order_mark_is_accepted() -> None:
    sidecar, _ = parse_sidecar(b'\xef\xbb\xbf{"prompt": "ok"}')
    assert sidecar.prompt == "ok"


def test_oversized_sidecar_is_refused_before_parsing() -> None:
    raw = json.dumps({"prompt": "x", "metadata": {"pad": "a" * MAX_SIDECAR_BYTES}}).encode()
    assert error_of(raw).code == "sidecar_too_large"


def test_deep_nesting_is_a_clear_error() -> None:
    raw = b'{"prompt": "x", "metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert error_of(raw[:MAX_SIDECAR_BYTES]).code in {"invalid_json", "sidecar_too_large"}


# ---- messages are bounded, whatever the sidecar holds ---------------------------------------------
# The FAILED record carries the message into a DynamoDB item (400 KB), an EventBridge entry
# (256 KB) and error.json; a few KB is what a person reads anyway.
MESSAGE_BOUND_BYTES = 4096
ALLOWED_LIST = "allowed fields: " + ", ".join(ALLOWED_FIELDS)


def many_unknown_fields(count: int, width: int) -> bytes:
    document: dict[str, object] = {"prompt": "snow"}
    document.update({f"f{index:0{width}d}": 1 for index in range(count)})
    return json.dumps(document).encode()


@pytest.mark.parametrize(("count", "width", "size_at_least"), [(3000, 4, 23_000), (1000, 6, 12_000)])
def test_thousands_of_unknown_fields_make_a_message_of_a_few_kb(count: int, width: int, size_at_least: int) -> None:
    raw = many_unknown_fields(count, width)
    assert len(raw) >= size_at_least  # the 23 KB and 12 KB sidecars of the report

    error = error_of(raw)

    assert error.code == "invalid_sidecar"
    assert len(error.message.encode()) <= MESSAGE_BOUND_BYTES
    assert f"unknown field `f{0:0{width}d}`" in error.message  # the first one is named
    assert error.message.count("allowed fields") == 1  # the allowed list once, not once per field
    assert ALLOWED_LIST in error.message
    assert f"and {count - 10} more problems" in error.message
    assert len(json.dumps(error.to_record()).encode()) <= MESSAGE_BOUND_BYTES + 1024


def test_long_values_and_field_names_are_quoted_shortened() -> None:
    raw = json.dumps({"prompt": "x", "provider": "p" * 50_000, "k" * 50_000: 1, "safety": {"mode": ["m" * 1000] * 100}}).encode()
    error = error_of(raw)
    assert len(error.message.encode()) <= MESSAGE_BOUND_BYTES
    assert '(got "ppppp' in error.message and "p…)" in error.message


def test_a_refused_value_is_quoted_with_the_allowed_ones() -> None:
    error = error_of(b'{"prompt": "x", "provider": "nope"}')
    assert "field `provider`" in error.message
    assert '"nope"' in error.message
    assert "'kie', 'apikley', 'runware', 'crun', 'replicate' or 'runway'" in error.message


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ({"aspectRatio": "2:1"}, '"2:1"'),
        ({"seed": "forty-two"}, '"forty-two"'),
        ({"numberResults": 9}, "9"),
        ({"safety": {"mode": "all"}}, '"all"'),
        ({"outputFormat": "gif"}, '"GIF"'),
    ],
)
def test_every_refused_value_is_quoted(document: dict[str, object], named: str) -> None:
    error = error_of(json.dumps({"prompt": "x", **document}).encode())
    assert f"(got {named})" in error.message


def test_credentials_in_a_quoted_url_are_left_out() -> None:
    raw = json.dumps({"prompt": "x", "frameImages": [{"image": "https://user:hunter2@images.test/a.png", "frame": "first", "timestamp": 1}]}).encode()
    error = error_of(raw)
    assert "not both" in error.message
    assert "https://images.test/a.png" in error.message
    assert "hunter2" not in error.message and "user" not in error.message


def test_a_job_error_message_is_capped_with_a_marker_and_storable() -> None:
    error = JobError("generation_failed", "x" * 1_000_000 + "\ud800", "provider", details={"providerCode": "c" * 500_000})
    record = error.to_record()
    assert len(record["message"]) <= JobError.MAX_MESSAGE_CHARS
    assert re.search(r"x… \[truncated: 99\d{4} more characters\]$", record["message"])
    assert JobError.shorten(record["message"], JobError.MAX_MESSAGE_CHARS) == record["message"]  # bounded once, not cut again
    assert len(record["details"]["providerCode"]) <= JobError.MAX_DETAIL_CHARS
    json.dumps(record, ensure_ascii=False).encode("utf-8")  # no lone surrogate left: UTF-8 holds it
    assert "\\udcff" in JobError("c", "bad \udcff", "provider").message
