"""Generate the README's reference sections and ``docs/openapi.json`` from the code.

    python -m tools.gen_docs          # rewrite them
    python -m tools.gen_docs --check  # exit 1 if they drifted (tests/unit/test_docs.py does the same)

Sections of README.md between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``:
``sidecar`` (the reference schema ``schemas.sidecar.Sidecar``), ``providers`` (what each
adapter in ``aleph_pipeline.providers`` declares), ``errors`` (``errors.MEANINGS`` + ``HINTS``)
and ``events`` (``schemas.job_events.JobEventDetail``). The OpenAPI document comes from the status
route as ``schemas.status.documented_api`` declares it (the handler's own resolver validates nothing).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from aws_lambda_powertools.event_handler.openapi.models import APIKey

from aleph_pipeline.errors import HINTS, MEANINGS
from aleph_pipeline.notifications import DETAIL_TYPES, SOURCE
from aleph_pipeline.providers import provider_docs
from aleph_pipeline.providers.base import COMMON_FIELDS
from schemas.job_events import JobEventDetail
from schemas.sidecar import Sidecar
from schemas.status import documented_api

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
OPENAPI = ROOT / "docs" / "openapi.json"


# ------------------------------------------------------------------------------ sections


def sidecar_table() -> str:
    schema = Sidecar.model_json_schema(by_alias=True)
    required = set(schema.get("required", []))
    rows = ["| field | type | meaning |", "|---|---|---|"]
    for name, prop in schema["properties"].items():
        kind = describe_type(prop, schema.get("$defs", {}))
        if name in required:
            kind += ", required"
        rows.append(f"| `{name}` | {kind} | {_cell(prop.get('description', ''))} |")
    return "\n".join(rows)


def provider_tables() -> str:
    providers = provider_docs()
    lines = [
        "| provider | models (default first) | videos | max video | max prompt | limits | price |",
        "|---|---|---|---|---|---|---|",
    ]
    for provider_id, models, docs in providers:
        if docs is None:
            lines.append(f"| `{provider_id}` | {', '.join(f'`{m}`' for m in models)} | not declared | | | | |")
            continue
        lines.append(
            f"| `{provider_id}` | {', '.join(f'`{m}`' for m in models)} | {', '.join(docs.video_formats)} | {_size(docs.max_video_bytes)} "
            f"| {docs.max_prompt_chars or 'no limit'} characters | {_cell(docs.limits)} | {_cell(docs.price)} |"
        )
    options = [name for name in Sidecar.model_json_schema(by_alias=True)["properties"] if name not in COMMON_FIELDS]
    lines += ["", "Which options each provider honours (`prompt`, `provider`, `model`, `video`, `metadata` and `providerOptions` go everywhere):", ""]
    lines.append("| option | " + " | ".join(f"`{provider_id}`" for provider_id, _, _ in providers) + " |")
    lines.append("|---|" + "---|" * len(providers))
    for option in options:
        marks = ["yes" if docs and option in docs.fields else ("?" if docs is None else "no") for _, _, docs in providers]
        lines.append(f"| `{option}` | " + " | ".join(marks) + " |")
    return "\n".join(lines)


def error_table() -> str:
    rows = ["| code | stage | meaning | what to do |", "|---|---|---|---|"]
    for code, (stage, meaning) in MEANINGS.items():
        rows.append(f"| `{code}` | {stage} | {_cell(meaning)} | {_cell(HINTS.get(code, ''))} |")
    return "\n".join(rows)


def event_table() -> str:
    schema = JobEventDetail.model_json_schema()
    types = " / ".join(f"`{name}`" for name in DETAIL_TYPES.values())
    rows = [f"Source `{SOURCE}`, detail-type {types}; the `detail`:", "", "| field | type | meaning |", "|---|---|---|"]
    for name, prop in schema["properties"].items():
        rows.append(f"| `{name}` | {describe_type(prop, schema.get('$defs', {}))} | {_cell(prop.get('description', ''))} |")
    return "\n".join(rows)


SECTIONS: dict[str, Callable[[], str]] = {
    "sidecar": sidecar_table,
    "providers": provider_tables,
    "errors": error_table,
    "events": event_table,
}


def openapi_document() -> str:
    """The status API's OpenAPI document, from the resolver that documents its route."""
    text: str = documented_api().get_openapi_json_schema(
        title="aleph-pipeline job status API",
        version="1.0.0",
        description="GET /jobs/{jobId} on the stack's HTTP API (output JobStatusApiUrl). Requests are signed with SigV4 (service execute-api).",
        security_schemes={
            "AWS_IAM": APIKey.model_validate({"type": "apiKey", "name": "Authorization", "in": "header", "description": "AWS Signature Version 4 (IAM)"}),
        },
    )
    return json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


# ------------------------------------------------------------------------------- plumbing


def describe_type(prop: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    """A JSON schema property in a few words: ``integer 0 … 4``, ```16:9`, `9:16```, ``list of string``."""
    options = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
    return " or ".join(_one_type(option, defs) for option in options)


def _one_type(prop: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    if "$ref" in prop:
        name = str(prop["$ref"]).rsplit("/", 1)[-1]
        target = defs.get(name, {})
        return "object (" + ", ".join(f"`{key}`" for key in target.get("properties", {})) + ")" if target else "object"
    if "enum" in prop:
        return ", ".join(f"`{value}`" for value in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    kind = prop.get("type", "any")
    if kind == "array":
        items = prop.get("items", {})
        inner = " or ".join(_one_type(p, defs) for p in items.get("anyOf", [items]))
        size = f", at least {prop['minItems']}" if "minItems" in prop else ""
        return f"list of {inner}{size}"
    if kind in ("integer", "number"):
        low, high = prop.get("minimum"), prop.get("maximum")
        if low is not None and high is not None:
            return f"{kind} {low} … {high}"
        return str(kind)
    if kind == "string" and "maxLength" in prop:
        return f"string, at most {prop['maxLength']} characters"
    return str(kind)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _size(value: int | None) -> str:
    if value is None:
        return "no limit"
    return f"{value / 1024**2:g} MB" if value % 1024**2 == 0 else f"{value} bytes"


def render_readme(text: str, sections: Iterable[str] = SECTIONS) -> str:
    """``text`` with each generated section replaced by what the code says now."""
    for name in sections:
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(\n<!-- /generated:{name} -->)", re.DOTALL)
        if not pattern.search(text):
            raise ValueError(f"README.md has no <!-- generated:{name} --> ... <!-- /generated:{name} --> section")
        body = SECTIONS[name]()
        text = pattern.sub(lambda match, body=body: match.group(1) + body + match.group(2), text)  # type: ignore[misc]
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gen_docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md or docs/openapi.json differ from the code")
    args = parser.parse_args(argv)
    current_readme = README.read_text(encoding="utf-8")
    current_openapi = OPENAPI.read_text(encoding="utf-8") if OPENAPI.is_file() else ""
    readme, openapi = render_readme(current_readme), openapi_document()
    stale = [str(path.relative_to(ROOT)) for path, old, new in ((README, current_readme, readme), (OPENAPI, current_openapi, openapi)) if old != new]
    if args.check:
        if stale:
            print(f"out of date: {', '.join(stale)} (run `python -m tools.gen_docs`)", file=sys.stderr)
            return 1
        return 0
    README.write_text(readme, encoding="utf-8")
    OPENAPI.parent.mkdir(exist_ok=True)
    OPENAPI.write_text(openapi, encoding="utf-8")
    print(f"wrote {', '.join(stale) or 'nothing (up to date)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
