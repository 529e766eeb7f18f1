"""The runtime sidecar validator (``sidecar``, no pydantic) against the reference schema
(``schemas.sidecar``, pydantic): the same fields, the same verdicts, values and problems."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from aleph_pipeline import sidecar
from aleph_pipeline.sidecar import PROVIDER_IDS, Problem, SidecarInvalid, field_table
from schemas import sidecar as sidecar_schema

RECORDS = [(sidecar.Sidecar, sidecar_schema.Sidecar), (sidecar.FrameImage, sidecar_schema.FrameImage), (sidecar.Safety, sidecar_schema.Safety)]


@pytest.mark.parametrize(("runtime", "schema"), RECORDS, ids=lambda kind: kind.__name__)
def test_the_field_table_and_the_schema_have_the_same_fields(runtime: type, schema: type[BaseModel]) -> None:
    table = field_table(runtime)
    assert [field.name for field in table] == list(schema.model_fields)
    assert [field.alias for field in table] == [info.alias or name for name, info in schema.model_fields.items()]
    assert [field.required for field in table] == [info.is_required() for info in schema.model_fields.values()]
    assert [field.description for field in table] == [info.description or "" for info in schema.model_fields.values()]


def test_the_allowed_fields_are_the_schema_fields() -> None:
    assert tuple(sidecar_schema.Sidecar.model_json_schema(by_alias=True)["properties"]) == sidecar.ALLOWED_FIELDS


# ---- near-valid documents: the right names, with edge and wrong values ------------------------
texts = st.sampled_from(["", " ", "\t", "a", " a ", "\x1c", " \x85x\u3000", "\u200b", "\ud800", "shot.png", "x" * 101]) | st.text(max_size=6)
numbers = (
    st.integers(min_value=-3, max_value=10)
    | st.sampled_from([0, 1, 4, 5, 20, 99, 100, 8192, 8193, 4294967295, 4294967296, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**400, 30, 31])
    | st.sampled_from([0.0, -0.0, 1.0, 1.5, 2.5, 5.0, 29.999, 30.0, 30.5, -1.0, 1e300, math.nan, math.inf, -math.inf])
)
scalars = st.none() | st.booleans() | numbers | texts
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)


def one_of_or(values: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    """A right value (any letter case too), or a wrong one."""
    return st.sampled_from(values) | st.sampled_from(values).map(lambda value: value.lower() if isinstance(value, str) else value) | scalars


frame_objects = st.fixed_dictionaries(
    {},
    optional={
        "image": texts | scalars,
        "frame": one_of_or(("first", "last", 0, -1)) | st.sampled_from([0.0, -1.0, "0", 1]),
        "timestamp": numbers | st.sampled_from(["1.5", True]),
        "extra": scalars,
    },
)
frame_entries = texts | frame_objects | scalars
safety = st.fixed_dictionaries({}, optional={"checkContent": st.booleans() | scalars, "mode": one_of_or(("none", "fast", "full")), "level": scalars}) | scalars
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "prompt": texts | scalars,
    "provider": one_of_or(PROVIDER_IDS),
    "providers": st.lists(one_of_or(PROVIDER_IDS), max_size=8) | scalars,
    "model": texts | scalars,
    "video": texts | scalars,
    "referenceImages": st.lists(texts | scalars, max_size=3) | scalars,
    "frameImages": st.lists(frame_entries, max_size=3) | scalars,
    "aspectRatio": one_of_or(("16:9", "9:16", "4:3", "3:4", "1:1", "21:9")),
    "width": numbers | scalars,
    "height": numbers | scalars,
    "seed": numbers | scalars,
    "numberResults": numbers | scalars,
    "outputFormat": one_of_or(("MP4", "WEBM", "MOV", "mp4", " mov")),
    "outputQuality": numbers | scalars,
    "watermark": texts | scalars,
    "publicFigureThreshold": one_of_or(("auto", "low")),
    "safety": safety,
    "providerOptions": anything,
    "metadata": anything,
    "promt": anything,
    "aspect_ratio": anything,
}
near_valid = st.fixed_dictionaries(
    {}, optional={name: st.just("make it snow") | strategy if name == "prompt" else strategy for name, strategy in FIELD_VALUES.items()}
)
near_valid_with_a_prompt = st.builds(lambda document, prompt: {"prompt": prompt, **document}, near_valid, st.sampled_from(["snow", " snow "]))


def plain(value: Any) -> Any:
    """A validated value as plain data, the record's type kept in its shape (to compare both sides)."""
    if isinstance(value, BaseModel):
        return (type(value).__name__, {name: plain(getattr(value, name)) for name in type(value).model_fields})
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, {field.name: plain(getattr(value, field.name)) for field in field_table(type(value))})
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def described(problems: list[Problem]) -> list[tuple[Any, ...]]:
    # repr: NaN equals itself, and 1 is not 1.0
    return [(problem.location, problem.kind, problem.message, repr(problem.value)) for problem in problems]


def assert_same_verdict(document: dict[str, Any]) -> None:
    try:
        expected = sidecar_schema.Sidecar.model_validate(document)
    except ValidationError as refused:
        with pytest.raises(SidecarInvalid) as caught:
            sidecar.Sidecar.from_document(document)
        assert described(list(caught.value.problems)) == described(sidecar_schema.schema_problems(refused))
        return
    got = sidecar.Sidecar.from_document(document)
    assert repr(plain(got)[1]) == repr(plain(expected)[1])
    aliases = {name: info.alias or name for name, info in sidecar_schema.Sidecar.model_fields.items()}
    assert got.given_fields == {aliases[name] for name in expected.model_fields_set}


REFERENCE_SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@REFERENCE_SETTINGS
@given(near_valid_with_a_prompt | near_valid)
@example({"prompt": "x", "frameImages": [{"image": "a", "timestamp": "1.5"}]})  # lax pydantic took it; strict refuses
@example({"prompt": "x", "frameImages": [{"image": "a", "frame": -1.0}, " b "], "seed": 5.0})
@example({"prompt": " \x1c ", "provider": "kie", "providers": ["kie"], "zz": 1})
@example({"prompt": "x", "providers": ["x"] * 7})
def test_the_runtime_validator_gives_the_schema_verdict(document: dict[str, Any]) -> None:
    assert_same_verdict(document)


@REFERENCE_SETTINGS
@given(st.dictionaries(st.sampled_from(["frame", "timestamp", "image", "x"]), scalars | texts, max_size=4))
def test_a_frame_image_object_gets_the_schema_verdict(entry: dict[str, Any]) -> None:
    assert_same_verdict({"prompt": "x", "frameImages": [entry]})


def test_a_strict_frame_image_refuses_a_number_as_text() -> None:
    with pytest.raises(SidecarInvalid) as caught:
        sidecar.Sidecar.from_document({"prompt": "x", "frameImages": [{"image": "a", "timestamp": "1.5"}]})
    assert "field `frameImages.0.timestamp`: Input should be a valid number" in str(caught.value)


def test_safety_in_its_sidecar_form() -> None:
    parsed = sidecar.Sidecar.from_document({"prompt": "x", "safety": {"checkContent": False, "mode": None}})
    assert parsed.safety is not None and parsed.safety.to_document() == {"checkContent": False}
