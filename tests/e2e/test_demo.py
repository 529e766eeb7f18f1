"""`make demo` from the outside: it writes an edited result, job.json and a preview picture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from local.client import REPO_ROOT
from local.media import duration_seconds, frame_rgb, mean_abs_difference

pytestmark = pytest.mark.e2e


def test_demo_writes_result_and_preview(tmp_path: Path) -> None:
    out = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, "-m", "local.demo", "--out", str(out), "--workdir", str(tmp_path / "stack")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        # Like `make demo`: the repository and the layer on the path (the CLI uses the domain's job ids).
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "layers" / "domain")])},
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "COMPLETED" in completed.stdout
    assert sorted(path.name for path in out.iterdir()) == ["cover.png", "job.json", "preview.png", "result.mp4"]
    manifest = json.loads((out / "job.json").read_text())
    assert manifest["state"] == "COMPLETED"
    sample = tmp_path / "stack" / "sample.mp4"
    assert duration_seconds(out / "result.mp4") <= 5.1
    assert mean_abs_difference(frame_rgb(sample), frame_rgb(out / "result.mp4")) > 30
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_runs_any_provider(tmp_path: Path) -> None:
    """`make demo PROVIDER=runway`: Runway's own API (uploads, no webhooks), completed by polling."""
    out = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, "-m", "local.demo", "--out", str(out), "--workdir", str(tmp_path / "stack")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PROVIDER": "runway", "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "layers" / "domain")])},
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "provider: runway" in completed.stdout
    manifest = json.loads((out / "job.json").read_text())
    assert (manifest["state"], manifest["provider"], manifest["model"]) == ("COMPLETED", "runway", "aleph2")
    assert manifest["providerTaskId"] and (out / "preview.png").is_file()
