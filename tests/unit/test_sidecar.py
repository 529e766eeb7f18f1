import json

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
    assert set(ALLOWED_FIELDS) == set(document)


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
