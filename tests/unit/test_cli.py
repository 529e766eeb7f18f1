"""The aleph CLI's argument handling, stack discovery and packaging (its commands run end to end in tests/e2e)."""

from __future__ import annotations

import importlib
import json
import tomllib
from pathlib import Path

import pytest

from aleph_cli.main import build_parser, build_sidecar, main
from aleph_cli.stack import discover

ROOT = Path(__file__).resolve().parents[2]


def sidecar(*argv: str) -> dict[str, object]:
    return build_sidecar(build_parser().parse_args(["submit", "clip.mp4", *argv]))


def test_options_become_sidecar_fields() -> None:
    assert sidecar("--prompt", "snow", "--provider", "apikley", "--aspect-ratio", "9:16", "--seed", "7") == {
        "prompt": "snow",
        "provider": "apikley",
        "aspectRatio": "9:16",
        "seed": 7,
    }
    assert sidecar("--prompt", "p", "--set", "numberResults=2", "--set", 'safety={"mode": "fast"}', "--set", "outputFormat=mov", "--metadata", "shot=A-1") == {
        "prompt": "p",
        "numberResults": 2,
        "safety": {"mode": "fast"},
        "outputFormat": "mov",
        "metadata": {"shot": "A-1"},
    }


def test_a_malformed_set_is_one_readable_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text(
        json.dumps({"input_bucket": "i", "input_prefix": "incoming/", "output_bucket": "o", "jobs_table": "t", "s3_endpoint": "http://127.0.0.1:9"})
    )
    assert main(["--local", str(tmp_path), "submit", str(tmp_path / "clip.mp4"), "--prompt", "p", "--set", "novalue"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("aleph: --set 'novalue': expected FIELD=JSON")


def test_a_missing_video_is_named_before_anything_is_uploaded(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text(
        json.dumps({"input_bucket": "i", "input_prefix": "incoming/", "output_bucket": "o", "jobs_table": "t", "s3_endpoint": "http://127.0.0.1:9"})
    )
    assert main(["--local", str(tmp_path), "submit", str(tmp_path / "nope.mp4"), "--prompt", "p"]) == 1
    assert capsys.readouterr().err == f"aleph: {tmp_path / 'nope.mp4'}: no such file\n"


def test_no_stack_is_one_readable_error(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALEPH_STACK", raising=False)
    assert main(["--local", str(tmp_path / "none"), "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist (start one with `make local`)" in err


def test_local_stack_json_is_read(tmp_path: Path) -> None:
    info = {"input_bucket": "in", "input_prefix": "incoming/", "output_bucket": "out", "jobs_table": "jobs"}
    info.update(s3_endpoint="http://127.0.0.1:5", region="eu-west-1")
    (tmp_path / "stack.json").write_text(json.dumps(info))
    stack = discover(local_dir=tmp_path)
    assert (stack.input_bucket, stack.output_bucket, stack.jobs_table) == ("in", "out", "jobs")
    assert (stack.endpoint_url, stack.region) == ("http://127.0.0.1:5", "eu-west-1")


def test_pyproject_installs_the_aleph_command() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    module, _, attribute = project["project"]["scripts"]["aleph"].partition(":")
    assert getattr(importlib.import_module(module), attribute) is main
    packages = project["tool"]["setuptools"]["packages"]
    assert "aleph_cli" in packages and "aleph_pipeline" in packages
    assert project["tool"]["setuptools"]["package-dir"]["aleph_pipeline"] == "layers/domain/aleph_pipeline"
    assert any(dependency.startswith("rich") for dependency in project["project"]["dependencies"])


def test_prompts_make_a_variants_sidecar_without_a_prompt() -> None:
    assert sidecar("--prompts", "snow", "rain", "--seed", "3") == {"prompts": ["snow", "rain"], "seed": 3}
    assert sidecar("--provider", "kie") == {"provider": "kie"}  # no prompt at all: upload_pair refuses it
    with pytest.raises(SystemExit):
        sidecar("--prompt", "snow", "--prompts", "rain")


def test_a_sidecar_without_any_prompt_is_refused_before_anything_is_uploaded(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text(
        json.dumps({"input_bucket": "i", "input_prefix": "incoming/", "output_bucket": "o", "jobs_table": "t", "s3_endpoint": "http://127.0.0.1:9"})
    )
    (tmp_path / "clip.mp4").write_bytes(b"\x00")
    assert main(["--local", str(tmp_path), "submit", str(tmp_path / "clip.mp4")]) == 1
    assert capsys.readouterr().err == "aleph: a prompt is needed (--prompt, or --prompts for variants)\n"
