"""The README's reference sections and docs/openapi.json are what the code says (regenerate with `python -m tools.gen_docs`)."""

from __future__ import annotations

import json

from aleph_pipeline.errors import HINTS, MEANINGS
from aleph_pipeline.sidecar import ALLOWED_FIELDS
from tools import gen_docs


def test_readme_sections_match_the_code() -> None:
    current = gen_docs.README.read_text(encoding="utf-8")
    assert gen_docs.render_readme(current) == current, "README.md drifted from the code: run `python -m tools.gen_docs`"


def test_openapi_document_matches_the_code() -> None:
    assert gen_docs.OPENAPI.read_text(encoding="utf-8") == gen_docs.openapi_document(), "docs/openapi.json drifted: run `python -m tools.gen_docs`"


def test_a_changed_table_is_noticed_and_rewritten() -> None:
    current = gen_docs.README.read_text(encoding="utf-8")
    tampered = current.replace("| `seed` | integer 0 … 4294967295 |", "| `seed` | integer 0 … 99 |")
    assert tampered != current
    assert gen_docs.render_readme(tampered) == current


def test_sidecar_table_lists_every_field_once() -> None:
    table = gen_docs.sidecar_table()
    for name in ALLOWED_FIELDS:
        assert table.count(f"| `{name}` |") == 1, name
    assert "| `prompt` | string, required |" in table


def test_every_error_code_has_a_meaning_a_stage_and_a_hint() -> None:
    assert set(MEANINGS) == set(HINTS)
    table = gen_docs.error_table()
    for code, (stage, _) in MEANINGS.items():
        assert f"| `{code}` | {stage} |" in table
        assert HINTS[code]


def test_provider_matrix_shows_what_kie_declares() -> None:
    matrix = gen_docs.provider_tables()
    assert "| `kie` | `aleph` | mp4, mov, avi, m4v | 10 MB | 2048 characters |" in matrix
    assert "| `numberResults` | no | no |" in matrix
    assert "| `seed` | yes | yes |" in matrix


def test_openapi_declares_the_status_route_with_iam_and_its_answers() -> None:
    document = json.loads(gen_docs.openapi_document())
    operation = document["paths"]["/jobs/{jobId}"]["get"]
    assert operation["security"] == [{"AWS_IAM": []}]
    assert set(operation["responses"]) == {"200", "404", "422"}
    assert operation["parameters"][0]["schema"]["pattern"] == "^[0-9a-f]{32}$"
    assert document["components"]["securitySchemes"]["AWS_IAM"]["in"] == "header"
