"""Folder defaults (merge, sources, validation naming the file) and variants (prompts, job ids)."""

from __future__ import annotations

import json

import pytest

from aleph_pipeline.defaults import FolderDefaults, merge, naming_sources, parse_defaults
from aleph_pipeline.errors import STAGE_INTAKE, JobError
from aleph_pipeline.jobs import Job
from aleph_pipeline.keys import classify, defaults_keys, job_id_for, variant_job_id
from aleph_pipeline.outputs import field_sources, manifest
from aleph_pipeline.sidecar import MAX_PROMPTS, parse_sidecar, variant_document, variant_prompts

TEAM = "incoming/team-a/_defaults.json"
SHOTS = "incoming/team-a/shots/_defaults.json"


def test_defaults_files_are_read_from_the_sidecars_folder_up_to_the_input_prefix() -> None:
    assert defaults_keys("incoming/team-a/shots/x.json", "incoming/", 16) == [SHOTS, TEAM, "incoming/_defaults.json"]
    assert defaults_keys("incoming/x.json", "incoming/", 16) == ["incoming/_defaults.json"]
    assert defaults_keys("a/b/x.json", "", 16) == ["a/b/_defaults.json", "a/_defaults.json", "_defaults.json"]


def test_defaults_files_read_are_bounded_by_depth_nearest_first() -> None:
    deep = "incoming/" + "/".join(f"d{i}" for i in range(30)) + "/x.json"
    keys = defaults_keys(deep, "incoming/", 16)
    assert len(keys) == 16
    assert keys[0] == deep.rsplit("/", 1)[0] + "/_defaults.json"


def test_a_defaults_upload_is_not_a_sidecar() -> None:
    assert classify(TEAM).kind == "defaults"
    assert classify("incoming/team-a/my_defaults.json").kind == "sidecar"


def test_nearest_folder_wins_and_the_sidecar_wins_over_all() -> None:
    layers = [
        FolderDefaults(SHOTS, {"aspectRatio": "9:16"}),
        FolderDefaults(TEAM, {"aspectRatio": "16:9", "seed": 7, "watermark": "team-a"}),
    ]
    merged, sources = merge({"prompt": "snow", "watermark": "mine"}, layers)
    assert merged == {"aspectRatio": "9:16", "seed": 7, "watermark": "mine", "prompt": "snow"}
    assert sources == {"aspectRatio": SHOTS, "seed": TEAM, "watermark": "sidecar", "prompt": "sidecar"}


def test_a_null_in_the_sidecar_drops_the_default() -> None:
    merged, sources = merge({"prompt": "snow", "seed": None}, [FolderDefaults(TEAM, {"seed": 7})])
    assert merged == {"prompt": "snow"} and sources == {"prompt": "sidecar"}


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        (b'{"aspectRatio": "16:9",}', "invalid_json", "is not valid JSON"),
        (b'["16:9"]', "invalid_sidecar", "must be a JSON object"),
        (b'{"aspectRatoi": "16:9"}', "invalid_sidecar", "unknown field `aspectRatoi`"),
        (b'{"seed": "42"}', "invalid_sidecar", "field `seed`"),
        (b'{"prompt": "snow"}', "invalid_sidecar", "`prompt` cannot be a default"),
        (b'{"video": "a.mp4"}', "invalid_sidecar", "`video` cannot be a default"),
    ],
)
def test_invalid_defaults_name_the_defaults_file(raw: bytes, code: str, words: str) -> None:
    with pytest.raises(JobError) as caught:
        parse_defaults(TEAM, raw)
    assert caught.value.code == code
    assert f"the folder defaults `{TEAM}`" in caught.value.message
    assert words in caught.value.message


def test_valid_defaults_are_their_fields() -> None:
    assert parse_defaults(TEAM, b'{"aspectRatio": "16:9", "metadata": {"team": "a"}}') == {"aspectRatio": "16:9", "metadata": {"team": "a"}}


def test_an_error_about_a_default_field_names_its_defaults_file() -> None:
    error = JobError("unsupported_option", "`numberResults` cannot be honoured by provider `kie` with model `x`", STAGE_INTAKE)
    named = naming_sources(error, {"prompt": "sidecar", "numberResults": TEAM})
    assert named.message.endswith(f"(folder defaults: `numberResults` from `{TEAM}`)")
    assert naming_sources(error, {"numberResults": "sidecar"}) is error


def test_prompts_make_one_document_per_prompt() -> None:
    document = {"prompts": ["snow", " rain "], "seed": 3}
    assert variant_prompts(document) == ["snow", "rain"]
    assert variant_document(document, 1) == {"seed": 3, "prompt": "rain"}
    assert variant_prompts({"prompt": "snow"}) is None
    assert variant_document({"prompt": None, "prompts": ["snow"]}, 0) == {"prompt": "snow"}  # null is no prompt


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ({"prompt": "snow", "prompts": ["rain"]}, "not both"),
        ({"prompts": []}, f"a list of 1 to {MAX_PROMPTS} prompts"),
        ({"prompts": "snow"}, f"a list of 1 to {MAX_PROMPTS} prompts"),
        ({"prompts": ["snow", ""]}, "field `prompts.1`: must be a non-empty string"),
        ({"prompts": ["p"] * (MAX_PROMPTS + 1)}, f"{MAX_PROMPTS + 1} prompts; at most {MAX_PROMPTS} are accepted"),
    ],
)
def test_invalid_prompts_are_named(document: dict[str, object], words: str) -> None:
    with pytest.raises(JobError) as caught:
        variant_document(document, 0)
    assert caught.value.code == "invalid_sidecar" and words in caught.value.message


def test_a_sidecar_with_prompts_is_not_a_sidecar_of_one_job() -> None:
    # Read as one job (what a sidecar whose prompts are wrong becomes) it fails by name.
    with pytest.raises(JobError, match="unknown field `prompts`"):
        parse_sidecar(b'{"prompts": ["snow"]}')


def test_variant_ids_are_deterministic_and_distinct() -> None:
    ids = [variant_job_id("b", "incoming/x.json", "v1", index) for index in range(3)]
    assert ids == [variant_job_id("b", "incoming/x.json", "v1", index) for index in range(3)]
    assert len({*ids, job_id_for("b", "incoming/x.json", "v1")}) == 4
    assert variant_job_id("b", "incoming/x.json", "v2", 0) != ids[0]  # a new upload: new jobs


def test_job_json_records_the_merged_sidecar_its_sources_and_the_variant() -> None:
    sidecar = {"prompt": "rain", "aspectRatio": "16:9"}
    item = {
        "jobId": "j1",
        "status": "SUCCEEDED",
        "outputPrefix": "team-a/x/j1/",
        "sidecarJson": json.dumps(sidecar),
        "fieldSources": {"prompt": "sidecar", "aspectRatio": TEAM},
        "variantIndex": 1,
        "variantCount": 2,
    }
    document = manifest(Job(item), [], "2026-01-01T00:00:00.000Z")
    assert document["sidecar"] == sidecar
    assert document["fieldSources"] == {"prompt": "sidecar", "aspectRatio": TEAM}
    assert document["variant"] == {"index": 1, "count": 2}


def test_without_defaults_every_field_is_the_sidecars() -> None:
    job = Job({"jobId": "j1", "status": "SUCCEEDED", "outputPrefix": "x/", "sidecarJson": json.dumps({"prompt": "snow", "seed": 1})})
    assert field_sources(job) == {"prompt": "sidecar", "seed": "sidecar"}
    assert "variant" not in manifest(job, [], "2026-01-01T00:00:00.000Z")
