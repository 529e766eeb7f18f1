"""The sidecar: the JSON file next to a video that says what edit to make (a contract)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from .errors import STAGE_INTAKE, JobError

MAX_SIDECAR_BYTES = 256 * 1024
MAX_PROMPTS = 20  # a sidecar's `prompts`: one job each
PROVIDER_IDS = ("kie", "apikley", "runware", "crun", "replicate", "runway")

# The sidecar is validated here without pydantic: submit and reconcile parse one on their cold
# path, and importing pydantic and building its models cost them more than half an `import boto3`.
# ``schemas.sidecar`` holds the same schema as a pydantic model (the README's table, the tests'
# reference); each problem is worded as pydantic words it, so messages read as they always have.


class Problem(NamedTuple):
    """One thing wrong with a sidecar: where (sidecar names, list indexes), what, and the value refused."""

    location: tuple[str | int, ...]
    kind: Literal["unknown", "missing", "invalid"]
    message: str
    value: Any


class SidecarInvalid(ValueError):
    """A sidecar document that is not valid; ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__(describe_problems(problems))
        self.problems = tuple(problems)


_INVALID: Any = object()  # what a check returns once it has recorded its problems
# What pydantic's `strip_whitespace` strips (Unicode White_Space, as Rust's `str::trim`): not
# Python's `str.strip()`, which strips the \x1c-\x1f separators too.
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_I64 = range(-(2**63), 2**63)


UNENCODABLE = "Input should be a valid string, unable to parse raw data as a unicode string"


def _unencodable(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (a JSON "\\ud800"), which is no Unicode text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


@dataclass(frozen=True, slots=True)
class Text:
    """A JSON string; stripped and at least ``min_length`` characters, or at most ``max_length``."""

    strip: bool = True
    min_length: int | None = 1
    max_length: int | None = None

    def check(self, value: Any, location: tuple[str | int, ...], problems: list[Problem]) -> Any:
        if not isinstance(value, str):
            return _refuse(problems, location, "Input should be a valid string", value)
        if _unencodable(value):
            return _refuse(problems, location, UNENCODABLE, value)
        text = value.strip(_WHITESPACE) if self.strip else value
        if self.min_length is not None and len(text) < self.min_length:
            return _refuse(problems, location, f"String should have at least {_plural(self.min_length, 'character')}", value)
        if self.max_length is not None and len(text) > self.max_length:
            return _refuse(problems, location, f"String should have at most {_plural(self.max_length, 'character')}", value)
        return text


@dataclass(frozen=True, slots=True)
class WholeNumber:
    """A JSON integer within ``ge``..``le``: `true`, `1.5` and `"1"` are not numbers, nor is `5.0`."""

    ge: int
    le: int

    def check(self, value: Any, location: tuple[str | int, ...], problems: list[Problem]) -> Any:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            return _refuse(problems, location, "Value error, must be a whole number", value)
        if not isinstance(value, int):
            return _refuse(problems, location, "Input should be a valid integer", value)
        return _bounded(value, value, self, location, problems)


@dataclass(frozen=True, slots=True)
class Number:
    """A JSON number within ``ge``..``le``, as a float."""

    ge: int
    le: int

    def check(self, value: Any, location: tuple[str | int, ...], problems: list[Problem]) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return _refuse(problems, location, "Input should be a valid number", value)
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            return _refuse(problems, location, "Input should be a valid number", value)
        return _bounded(number, value, self, location, problems)


def _bounded(number: float, value: Any, bounds: WholeNumber | Number, location: tuple[str | int, ...], problems: list[Problem]) -> Any:
    """``number`` (read from ``value``) if it is within the ``bounds``' ``ge``..``le``."""
    # The upper bound first, so NaN (which meets neither) is named by it, as pydantic does.
    if not number <= bounds.le:
        return _refuse(problems, location, f"Input should be less than or equal to {bounds.le}", value)
    if not number >= bounds.ge:
        return _refuse(problems, location, f"Input should be greater than or equal to {bounds.ge}", value)
    return number


@dataclass(frozen=True, slots=True)
class Choice:
    """One of ``allowed`` (strings exactly; a number equal to an integer choice counts as it);
    ``upper``: a string is upper-cased first."""

    allowed: tuple[str | int, ...]
    upper: bool = False

    def check(self, value: Any, location: tuple[str | int, ...], problems: list[Problem]) -> Any:
        if self.upper and isinstance(value, str):
            value = value.upper()
        if isinstance(value, str) and value in self.allowed:
            return value
        if isinstance(value, str) and _unencodable(value):
            return _refuse(problems, location, UNENCODABLE, value)
        integers = [choice for choice in self.allowed if isinstance(choice, int)]
        if integers and isinstance(value, int) and not isinstance(value, bool) and value not in _I64:
            return _refuse(problems, location, "Unable to parse input string as an integer, exceeded maximum size", value)
        if isinstance(value, int | float) and value in integers:  # `false` is 0 too, as pydantic takes it
            return int(value)
        words = [repr(choice) for choice in self.allowed]
        expected = words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
        return _refuse(problems, location, f"Input should be {expected}", value)


@dataclass(frozen=True, slots=True)
class Boolean:
    """JSON `true` or `false`."""

    def check(self, value: Any, location: tuple[str | int, ...], problems: list[Problem]) -> Any:
        return value if isinstance(value, bool) else _refuse(problems, location, "Input should be a valid boolean", value)


@dataclass(frozen=True, slots=True)
class Object:
    """A JSON object, taken as it is."""

    def check(self, value: Any, location: tuple[str | int, ...], problems: list[Problem]) -> Any:
        return dict(value) if isinstance(value, dict) else _refuse(problems, location, "Input should be a valid dictionary", value)


@dataclass(frozen=True, slots=True)
class ListOf:
    """A JSON array of ``min_items``..``max_items`` items, each checked by ``item``."""

    item: Spec
    min_items: int = 0
    max_items: int | None = None

    def check(self, value: Any, location: tuple[str | int, ...], problems: list[Problem]) -> Any:
        if not isinstance(value, list):
            return _refuse(problems, location, "Input should be a valid list", value)
        if self.max_items is not None and len(value) > self.max_items:
            return _refuse(problems, location, f"List should have at most {_plural(self.max_items, 'item')} after validation, not {len(value)}", value)
        items = [self.item.check(entry, (*location, index), problems) for index, entry in enumerate(value)]
        if any(item is _INVALID for item in items):
            return _INVALID
        if len(items) < self.min_items:
            return _refuse(problems, location, f"List should have at least {_plural(self.min_items, 'item')} after validation, not {len(items)}", value)
        return items


@dataclass(frozen=True, slots=True)
class OneOf:
    """The first of ``choices`` that takes the value; the problems of every one when none does."""

    choices: tuple[Spec, ...]

    def check(self, value: Any, location: tuple[str | int, ...], problems: list[Problem]) -> Any:
        found: list[Problem] = []
        for choice in self.choices:
            tried: list[Problem] = []
            checked = choice.check(value, location, tried)
            if checked is not _INVALID:
                return checked
            found += tried
        problems += found
        return _INVALID


@dataclass(frozen=True, slots=True)
class Record:
    """A JSON object with the fields of the dataclass ``kind`` (no others); ``rule``: a check across
    its fields, which returns what is wrong (or None)."""

    kind: type
    rule: Callable[[dict[str, Any]], str | None] | None = None

    def check(self, value: Any, location: tuple[str | int, ...], problems: list[Problem]) -> Any:
        if not isinstance(value, dict):
            return _refuse(problems, location, f"Input should be a valid dictionary or instance of {self.kind.__name__}", value)
        values = _checked_fields(self.kind, value, location, problems)
        if values is _INVALID:
            return _INVALID
        broken = self.rule(values) if self.rule is not None else None
        if broken is not None:
            return _refuse(problems, location, f"Value error, {broken}", value)
        return self.kind(**values)


Spec = Text | WholeNumber | Number | Choice | Boolean | Object | ListOf | OneOf | Record


def _refuse(problems: list[Problem], location: tuple[str | int, ...], message: str, value: Any) -> Any:
    problems.append(Problem(location, "invalid", message, value))
    return _INVALID


class Field(NamedTuple):
    """A row of a record's field table: its attribute name, sidecar name, value check, whether it
    must be given, what it means (the README's sidecar table), and a check against the fields
    before it (which returns what is wrong, or None)."""

    name: str
    alias: str
    spec: Spec
    required: bool
    description: str
    rule: Callable[[Any, dict[str, Any]], str | None] | None


def _field(
    spec: Spec, description: str = "", *, alias: str | None = None, required: bool = False, rule: Callable[[Any, dict[str, Any]], str | None] | None = None
) -> Any:
    """A record's field (a dataclass field): None unless given, or ``required``."""
    metadata = {"row": (alias, spec, required, description, rule)}
    return dataclasses.field(metadata=metadata) if required else dataclasses.field(default=None, metadata=metadata)


def field_table(kind: type) -> tuple[Field, ...]:
    """The field table of a record dataclass (Sidecar, FrameImage, Safety), in declaration order."""
    rows = []
    for field in dataclasses.fields(kind):
        if "row" in field.metadata:
            alias, spec, required, description, rule = field.metadata["row"]
            rows.append(Field(field.name, alias or field.name, spec, required, description, rule))
    return tuple(rows)


def _checked_fields(kind: type, document: dict[str, Any], location: tuple[str | int, ...], problems: list[Problem]) -> Any:
    """The values of ``kind``'s fields in ``document`` by attribute name, every given field (a null
    included); ``_INVALID`` once every problem is recorded (unknown fields last, as pydantic orders them)."""
    table = _TABLES[kind]
    known_before = len(problems)
    values: dict[str, Any] = {}
    for field in table:
        where = (*location, field.alias)
        if field.alias not in document:
            if field.required:
                problems.append(Problem(where, "missing", "Field required", document))
            continue
        raw = document[field.alias]
        value = None if raw is None and not field.required else field.spec.check(raw, where, problems)
        if value is _INVALID:
            continue
        broken = field.rule(value, values) if field.rule is not None and value is not None else None
        if broken is not None:
            problems.append(Problem(where, "invalid", f"Value error, {broken}", value))
            continue
        values[field.name] = value
    aliases = {field.alias for field in table}
    problems += [Problem((*location, name), "unknown", "Extra inputs are not permitted", raw) for name, raw in document.items() if name not in aliases]
    return _INVALID if len(problems) > known_before else values


def _one_position(values: dict[str, Any]) -> str | None:
    if values.get("frame") is not None and values.get("timestamp") is not None:
        return "give either `frame` or `timestamp`, not both"
    return None


def _a_chain(providers: list[str], earlier: dict[str, Any]) -> str | None:
    if earlier.get("provider") is not None:
        return "give either `provider` or `providers` (a chain), not both"
    if len(set(providers)) != len(providers):
        return "names a provider more than once"
    return None


@dataclass(frozen=True, slots=True)
class FrameImage:
    """An image pinned to a position in the video (Runware Aleph 2.0's object form)."""

    image: str = _field(Text(), required=True)
    frame: Literal["first", "last", 0, -1] | None = _field(Choice(("first", "last", 0, -1)))
    timestamp: float | None = _field(Number(ge=0, le=30))


@dataclass(frozen=True, slots=True)
class Safety:
    check_content: bool | None = _field(Boolean(), alias="checkContent")
    mode: Literal["none", "fast", "full"] | None = _field(Choice(("none", "fast", "full")))

    def to_document(self) -> dict[str, Any]:
        """The sidecar's form (camelCase names), without the fields it leaves unset."""
        return {field.alias: getattr(self, field.name) for field in _TABLES[Safety] if getattr(self, field.name) is not None}


@dataclass(frozen=True, slots=True)
class Sidecar:
    """Every field a sidecar may carry; which ones a provider honours is the provider's call.

    Sidecar names only (camelCase), and JSON types as they are: "42" is not a seed. Each field's
    description is the README's (``schemas.sidecar`` repeats it; tests/unit/test_sidecar_reference.py
    keeps the two the same)."""

    prompt: str = _field(
        Text(),
        "the edit to make, in words; or `prompts`, a list of up to 20 edits of the same video (one job each, with its own job id and output folder)",
        required=True,
    )
    provider: Literal["kie", "apikley", "runware", "crun", "replicate", "runway"] | None = _field(
        Choice(PROVIDER_IDS), "who runs the edit (default: the stack's `ProviderChain`, else its `DefaultProvider`)"
    )
    providers: list[Literal["kie", "apikley", "runware", "crun", "replicate", "runway"]] | None = _field(
        ListOf(Choice(PROVIDER_IDS), min_items=1, max_items=6),
        "a failover chain instead of `provider`: tried in order, the job moves on when a provider answers maintenance, feature disabled or out of credits\n"
        "(default: the stack's `ProviderChain`)",
        rule=_a_chain,
    )
    model: str | None = _field(Text(), "the provider's model id (default: the provider's default model)")
    video: str | None = _field(
        Text(),
        "the input video: a key relative to the sidecar's folder, a full key starting with the input prefix, or an `https://` URL\n"
        "(default: the video with the sidecar's name)",
    )
    reference_images: list[str] | None = _field(
        ListOf(Text(), min_items=1), "images (keys or https URLs) that guide the style or content", alias="referenceImages"
    )
    frame_images: list[str | FrameImage] | None = _field(
        ListOf(OneOf((Text(), Record(FrameImage, _one_position))), min_items=1),
        "images pinned to frames: keys/URLs, or `{image, frame | timestamp}` with `frame` `first`/`last`/`0`/`-1`",
        alias="frameImages",
    )
    aspect_ratio: Literal["16:9", "9:16", "4:3", "3:4", "1:1", "21:9"] | None = _field(
        Choice(("16:9", "9:16", "4:3", "3:4", "1:1", "21:9")), "the output's shape", alias="aspectRatio"
    )
    width: int | None = _field(WholeNumber(ge=1, le=8192), "output width in pixels")
    height: int | None = _field(WholeNumber(ge=1, le=8192), "output height in pixels")
    seed: int | None = _field(WholeNumber(ge=0, le=4294967295), "a seed, for reproducible results")
    number_results: int | None = _field(WholeNumber(ge=1, le=4), "how many variations to make", alias="numberResults")
    output_format: Literal["MP4", "WEBM", "MOV"] | None = _field(
        Choice(("MP4", "WEBM", "MOV"), upper=True), "the result's container (any letter case)", alias="outputFormat"
    )
    output_quality: int | None = _field(WholeNumber(ge=20, le=99), "compression quality", alias="outputQuality")
    watermark: str | None = _field(Text(strip=False, min_length=None, max_length=100), "watermark text")
    public_figure_threshold: Literal["auto", "low"] | None = _field(
        Choice(("auto", "low")), "how strictly content moderation treats public figures", alias="publicFigureThreshold"
    )
    safety: Safety | None = _field(Record(Safety), "content checks: `{checkContent, mode: none | fast | full}`")
    provider_options: dict[str, Any] | None = _field(
        Object(),
        "merged into the provider's request as-is (the escape hatch for fields not modelled here); may not replace the prompt, video or callback fields",
        alias="providerOptions",
    )
    metadata: dict[str, Any] | None = _field(Object(), "free-form, copied into `job.json` (never sent to the provider)")
    # The sidecar's own (camelCase) names of the fields it set (a null included).
    given_fields: frozenset[str] = dataclasses.field(default=frozenset(), compare=False, repr=False)

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Sidecar:
        """The sidecar in ``document`` (a decoded JSON object). Raises ``SidecarInvalid`` naming every problem."""
        problems: list[Problem] = []
        values = _checked_fields(cls, document, (), problems)
        if values is _INVALID:
            raise SidecarInvalid(problems)
        return cls(**values, given_fields=frozenset(_ALIASES[name] for name in values))


_TABLES: dict[type, tuple[Field, ...]] = {kind: field_table(kind) for kind in (FrameImage, Safety, Sidecar)}
_ALIASES = {field.name: field.alias for field in _TABLES[Sidecar]}
ALLOWED_FIELDS = tuple(field.alias for field in _TABLES[Sidecar])


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
        return Sidecar.from_document(document)
    except SidecarInvalid as exc:
        raise JobError("invalid_sidecar", str(exc), STAGE_INTAKE) from exc


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


def describe_problems(problems: Sequence[Problem]) -> str:
    """One readable sentence per problem (the first ``MAX_PROBLEMS_LISTED``), each naming the field
    by its sidecar name and quoting the refused value, shortened; the allowed fields once at the end."""
    sentences: list[str] = []
    unknown_top_level = False
    for problem in problems:
        location = ".".join(JobError.shorten(part, MAX_FIELD_NAME_CHARS) for part in problem.location)
        if problem.kind == "unknown":
            sentences.append(f"unknown field `{location}`")
            unknown_top_level = unknown_top_level or len(problem.location) == 1
        elif problem.kind == "missing":
            sentences.append(f"missing required field `{location}`")
        else:
            sentences.append(f"field `{location}`: {problem.message} (got {quote_value(problem.value)})")
    unique = list(dict.fromkeys(sentences))
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


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
