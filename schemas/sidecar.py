"""The sidecar's reference schema: the pydantic model of every field, for docs and tests only.

``tools.gen_docs`` writes the README's sidecar table from it and the tests check the runtime
validator (``aleph_pipeline.sidecar.Sidecar.from_document``) against it. Not in the layer (see
``schemas``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, ValidationInfo, field_validator, model_validator

from aleph_pipeline.sidecar import Problem

NonEmptyStr = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class FrameImage(BaseModel):
    """An image pinned to a position in the video (Runware Aleph 2.0's object form)."""

    # Strict like the sidecar: JSON types as they are, so a timestamp "1.5" is not a number.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    image: NonEmptyStr
    frame: Literal["first", "last", 0, -1] | None = None
    timestamp: float | None = Field(default=None, ge=0, le=30)

    @model_validator(mode="after")
    def _one_position(self) -> FrameImage:
        if self.frame is not None and self.timestamp is not None:
            raise ValueError("give either `frame` or `timestamp`, not both")
        return self


class Safety(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False, strict=True)

    check_content: bool | None = Field(default=None, alias="checkContent")
    mode: Literal["none", "fast", "full"] | None = None


class Sidecar(BaseModel):
    """Every field a sidecar may carry; which ones a provider honours is the provider's call."""

    # Each field's docstring is its description (the README's sidecar table is generated from it).
    # Sidecar names only (camelCase), and JSON types as they are: "42" is not a seed.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False, strict=True, use_attribute_docstrings=True)

    prompt: NonEmptyStr
    """the edit to make, in words; or `prompts`, a list of up to 20 edits of the same video (one job each, with its own job id and output folder)"""
    provider: Literal["kie", "apikley", "runware", "crun", "replicate", "runway"] | None = None
    """who runs the edit (default: the stack's `ProviderChain`, else its `DefaultProvider`)"""
    providers: list[Literal["kie", "apikley", "runware", "crun", "replicate", "runway"]] | None = Field(default=None, min_length=1, max_length=6)
    """a failover chain instead of `provider`: tried in order, the job moves on when a provider answers maintenance, feature disabled or out of credits
    (default: the stack's `ProviderChain`)"""
    model: NonEmptyStr | None = None
    """the provider's model id (default: the provider's default model)"""
    video: NonEmptyStr | None = None
    """the input video: a key relative to the sidecar's folder, a full key starting with the input prefix, or an `https://` URL
    (default: the video with the sidecar's name)"""
    reference_images: list[NonEmptyStr] | None = Field(default=None, alias="referenceImages", min_length=1)
    """images (keys or https URLs) that guide the style or content"""
    frame_images: list[NonEmptyStr | FrameImage] | None = Field(default=None, alias="frameImages", min_length=1)
    """images pinned to frames: keys/URLs, or `{image, frame | timestamp}` with `frame` `first`/`last`/`0`/`-1`"""
    aspect_ratio: Literal["16:9", "9:16", "4:3", "3:4", "1:1", "21:9"] | None = Field(default=None, alias="aspectRatio")
    """the output's shape"""
    width: int | None = Field(default=None, ge=1, le=8192)
    """output width in pixels"""
    height: int | None = Field(default=None, ge=1, le=8192)
    """output height in pixels"""
    seed: int | None = Field(default=None, ge=0, le=4294967295)
    """a seed, for reproducible results"""
    number_results: int | None = Field(default=None, alias="numberResults", ge=1, le=4)
    """how many variations to make"""
    output_format: Literal["MP4", "WEBM", "MOV"] | None = Field(default=None, alias="outputFormat")
    """the result's container (any letter case)"""
    output_quality: int | None = Field(default=None, alias="outputQuality", ge=20, le=99)
    """compression quality"""
    watermark: str | None = Field(default=None, max_length=100)
    """watermark text"""
    public_figure_threshold: Literal["auto", "low"] | None = Field(default=None, alias="publicFigureThreshold")
    """how strictly content moderation treats public figures"""
    safety: Safety | None = None
    """content checks: `{checkContent, mode: none | fast | full}`"""
    provider_options: dict[str, Any] | None = Field(default=None, alias="providerOptions")
    """merged into the provider's request as-is (the escape hatch for fields not modelled here); may not replace the prompt, video or callback fields"""
    metadata: dict[str, Any] | None = None
    """free-form, copied into `job.json` (never sent to the provider)"""

    @field_validator("providers")
    @classmethod
    def _a_chain(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is not None and info.data.get("provider") is not None:
            raise ValueError("give either `provider` or `providers` (a chain), not both")
        if value is not None and len(set(value)) != len(value):
            raise ValueError("names a provider more than once")
        return value

    @field_validator("output_format", mode="before")
    @classmethod
    def _upper_format(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("seed", "width", "height", "number_results", "output_quality", mode="before")
    @classmethod
    def _no_bool_or_float(cls, value: Any) -> Any:
        # JSON `true` or `1.5` for an integer field is a mistake, not a value to coerce.
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("must be a whole number")
        return value


def schema_problems(exc: ValidationError) -> list[Problem]:
    """pydantic's errors as the runtime validator's problems (to compare the two)."""
    kinds: dict[str, Any] = {"extra_forbidden": "unknown", "missing": "missing"}
    return [
        Problem(tuple(part for part in error["loc"] if not _is_union_tag(part)), kinds.get(error["type"], "invalid"), error["msg"], error.get("input"))
        for error in exc.errors(include_url=False)
    ]


def _is_union_tag(part: str | int) -> bool:
    # pydantic adds the union member's type name (e.g. "str" or "FrameImage") to the location.
    return isinstance(part, str) and (part in {"str", "FrameImage", "constrained-str"} or part.startswith("function-"))
