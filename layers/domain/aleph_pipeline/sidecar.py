"""The sidecar: the JSON file next to a video that says what edit to make (a contract)."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import STAGE_INTAKE, JobError

MAX_SIDECAR_BYTES = 256 * 1024
MAX_PROMPTS = 20  # a sidecar's `prompts`: one job each
PROVIDER_IDS = ("kie", "apikley", "runware", "crun", "replicate", "runway")

NonEmptyStr = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class FrameImage(BaseModel):
    """An image pinned to a position in the video (Runware Aleph 2.0's object form)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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

    @property
    def given_fields(self) -> set[str]:
        """The sidecar's own (camelCase) names of the fields it set."""
        return {_alias(name) for name in self.model_fields_set}


def _alias(name: str) -> str:
    field = Sidecar.model_fields[name]
    return field.alias or name


ALLOWED_FIELDS = tuple(_alias(name) for name in Sidecar.model_fields)


def parse_sidecar(raw: bytes) -> tuple[Sidecar, dict[str, Any]]:
    """Parse and validate a sidecar; return the model and the JSON object as received.

    Raises ``JobError`` whose message names every problem found.
    """
    document = read_document(raw)
    return validate_sidecar(document), document


def read_document(raw: bytes, name: str = "the sidecar") -> dict[str, Any]:
    """The JSON object in ``raw`` (a sidecar, or the folder defaults ``name``), not yet validated."""
    if len(raw) > MAX_SIDECAR_BYTES:
        raise sidecar_too_large(len(raw))
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark from a Windows editor is harmless
    except UnicodeDecodeError as exc:
        raise JobError("invalid_json", f"{name} is not UTF-8 text ({exc.reason} at byte {exc.start})", STAGE_INTAKE) from exc
    if not text.strip():
        raise JobError("invalid_json", f"{name} is empty; it must be a JSON object with at least a `prompt`", STAGE_INTAKE)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobError("invalid_json", f"{name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", STAGE_INTAKE) from exc
    except RecursionError as exc:
        raise JobError("invalid_json", f"{name} is nested too deeply", STAGE_INTAKE) from exc
    if not isinstance(document, dict):
        raise JobError("invalid_sidecar", f"{name} must be a JSON object, not {_json_type(document)}", STAGE_INTAKE)
    return document


def validate_sidecar(document: dict[str, Any]) -> Sidecar:
    """One job's sidecar (``prompts`` already expanded, folder defaults already merged)."""
    try:
        return Sidecar.model_validate(document)
    except ValidationError as exc:
        raise JobError("invalid_sidecar", describe_validation_error(exc), STAGE_INTAKE) from exc


def variant_prompts(document: dict[str, Any]) -> list[str] | None:
    """The sidecar's ``prompts`` (one job each), or None when it has a single ``prompt``.

    Raises ``JobError`` for ``prompts`` that is not a list of 1 to ``MAX_PROMPTS`` non-empty
    strings, or that comes with a ``prompt``.
    """
    if "prompts" not in document:
        return None
    prompts = document["prompts"]
    if document.get("prompt") is not None:  # a null `prompt` is no prompt
        raise JobError("invalid_sidecar", "give either `prompt` (one job) or `prompts` (one job per prompt), not both", STAGE_INTAKE)
    if not isinstance(prompts, list) or not prompts:
        raise JobError("invalid_sidecar", f"field `prompts`: must be a list of 1 to {MAX_PROMPTS} prompts (got {quote_value(prompts)})", STAGE_INTAKE)
    if len(prompts) > MAX_PROMPTS:
        raise JobError("invalid_sidecar", f"field `prompts`: {len(prompts)} prompts; at most {MAX_PROMPTS} are accepted (one job each)", STAGE_INTAKE)
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise JobError("invalid_sidecar", f"field `prompts.{index}`: must be a non-empty string (got {quote_value(prompt)})", STAGE_INTAKE)
    return [prompt.strip() for prompt in prompts]


def variant_document(document: dict[str, Any], index: int | None) -> dict[str, Any]:
    """The document of one job: ``prompts[index]`` as its ``prompt`` (the document itself when ``index`` is None)."""
    prompts = variant_prompts(document)
    if index is None or prompts is None:
        return document
    if not 0 <= index < len(prompts):
        raise JobError("invalid_sidecar", f"the sidecar has {len(prompts)} prompts, none at index {index}", STAGE_INTAKE)
    variant = {name: value for name, value in document.items() if name not in {"prompt", "prompts"}}
    variant["prompt"] = prompts[index]
    return variant


def sidecar_too_large(size: int) -> JobError:
    """The error for a sidecar of ``size`` bytes (its size from S3, so a 2 MB file is named as such)."""
    return JobError("sidecar_too_large", f"the sidecar is {size} bytes; at most {MAX_SIDECAR_BYTES} bytes are accepted", STAGE_INTAKE)


# A message is a few KB at most whatever the sidecar holds (it goes into a DynamoDB item, an
# EventBridge event and error.json): this many problems are listed, each value quoted this short.
MAX_PROBLEMS_LISTED = 10
MAX_QUOTED_CHARS = 80
MAX_FIELD_NAME_CHARS = 40
# The ``user:password@`` of anything URL-like in a quoted value.
URL_CREDENTIALS = re.compile(r"(?<=://)[^/?#\s\"'@]*@")


def describe_validation_error(exc: ValidationError) -> str:
    """One readable sentence per problem (the first ``MAX_PROBLEMS_LISTED``), each naming the field
    by its sidecar name and quoting the refused value, shortened; the allowed fields once at the end."""
    problems: list[str] = []
    unknown_top_level = False
    for error in exc.errors(include_url=False):
        parts = [part for part in error["loc"] if not _is_union_tag(part)]
        location = ".".join(JobError.shorten(part, MAX_FIELD_NAME_CHARS) for part in parts)
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown field `{location}`")
            unknown_top_level = unknown_top_level or len(parts) == 1
        elif error["type"] == "missing":
            problems.append(f"missing required field `{location}`")
        else:
            problems.append(f"field `{location}`: {error['msg']} (got {quote_value(error.get('input'))})")
    unique = list(dict.fromkeys(problems))
    text = "; ".join(unique[:MAX_PROBLEMS_LISTED])
    if len(unique) > MAX_PROBLEMS_LISTED:
        text += f"; and {len(unique) - MAX_PROBLEMS_LISTED} more problems"
    if unknown_top_level:
        # `prompts` never reaches the model: it is expanded into one `prompt` per job first.
        text += f"; allowed fields: {', '.join(ALLOWED_FIELDS)}; or `prompts` instead of `prompt`"
    return text


def quote_value(value: Any) -> str:
    """A sidecar value as JSON for a message: shortened, and without the credentials of a URL in it."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, RecursionError):
        text = _json_type(value)
    return JobError.shorten(URL_CREDENTIALS.sub("", text), MAX_QUOTED_CHARS)


def _is_union_tag(part: str | int) -> bool:
    # pydantic adds the union member's type name (e.g. "str" or "FrameImage") to the location.
    return isinstance(part, str) and (part in {"str", "FrameImage", "constrained-str"} or part.startswith("function-"))


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
