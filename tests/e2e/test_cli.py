"""The `aleph` command against the local stack: submit --wait with progress, get, status of a failed job, list, watch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from local.client import REPO_ROOT

from .conftest import Stack

pytestmark = pytest.mark.e2e


def aleph(stack: Stack, *args: str, cwd: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run `python -m aleph_cli` as a user would, against the session's stack (its stack.json)."""
    env = {**os.environ, "ALEPH_LOCAL_DIR": str(stack.workdir), "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "layers" / "domain")])}
    env.pop("ALEPH_STACK", None)
    return subprocess.run([sys.executable, "-m", "aleph_cli", *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd, env=env)


@pytest.fixture
def clip(stack: Stack, tmp_path: Path, unique: str) -> Path:
    path = tmp_path / f"clip-{unique}.mp4"
    path.write_bytes(stack.clip)
    return path


def test_submit_wait_shows_progress_and_ends_with_the_output_location_then_get_downloads_it(
    stack_clean: Stack, clip: Path, tmp_path: Path, unique: str
) -> None:
    stack = stack_clean
    done = aleph(stack, "submit", str(clip), "--prompt", f"snow {unique}", "--folder", "cli", "--seed", "7", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = re.search(r"^job ([0-9a-f]{32})$", done.stdout, re.MULTILINE)
    assert job_id, done.stdout
    job = stack.job_for(f"incoming/cli/{clip.stem}.json")
    assert job is not None and job["jobId"] == job_id.group(1) and job["status"] == "COMPLETED"
    # Progress: a line per state reached, with the elapsed time, ending in COMPLETED.
    states = re.findall(r"^\s+\d+\.\ds\s+(\S+)", done.stdout, re.MULTILINE)
    assert states[-1] == "COMPLETED" and len(states) >= 2, done.stdout
    assert done.stdout.rstrip().splitlines()[-1] == f"output: s3://{stack.info['output_bucket']}/cli/{clip.stem}/{job['jobId']}/result.mp4"
    assert stack.sim_tasks(unique)[0]["request"]["seed"] == 7
    # The sidecar went up last and names nothing but what was asked.
    sidecar = json.loads(stack.s3.get_object(Bucket=stack.bucket, Key=f"incoming/cli/{clip.stem}.json")["Body"].read())
    assert sidecar == {"prompt": f"snow {unique}", "seed": 7}

    target = tmp_path / "got"
    got = aleph(stack, "get", job["jobId"], "--to", str(target))
    assert got.returncode == 0, got.stderr
    assert sorted(path.name for path in target.iterdir()) == ["cover.png", "job.json", "result.mp4"]
    assert (target / "result.mp4").read_bytes() == stack.output_bytes(f"cli/{clip.stem}/{job['jobId']}/result.mp4")
    assert json.loads((target / "job.json").read_text())["jobId"] == job["jobId"]

    status = aleph(stack, "status", job["jobId"])
    assert status.returncode == 0
    assert re.search(r"^state\s+COMPLETED$", status.stdout, re.MULTILINE)
    assert f"s3://{stack.info['output_bucket']}/cli/{clip.stem}/{job['jobId']}/result.mp4" in status.stdout

    listed = aleph(stack, "list", "--state", "completed")
    assert listed.returncode == 0
    assert job["jobId"] in listed.stdout
    assert all(" COMPLETED " in line for line in listed.stdout.splitlines())


def test_a_failed_job_says_why_in_one_line_and_status_shows_the_reason(stack_clean: Stack, clip: Path, unique: str) -> None:
    stack = stack_clean
    message = f"Your prompt was caught by our AI moderator ({unique})"
    stack.sim_faults([{"fault": "generation_failure", "match_prompt": unique, "msg": message}])
    done = aleph(stack, "submit", str(clip), "--prompt", f"fail {unique}", "--wait")
    assert done.returncode == 1
    job_id = re.search(r"^job ([0-9a-f]{32})$", done.stdout, re.MULTILINE).group(1)  # type: ignore[union-attr]
    assert done.stderr == f"aleph: job {job_id} FAILED: generation_failed: {message}\n"

    status = aleph(stack, "status", job_id)
    assert status.returncode == 0
    assert re.search(rf"^error\s+generation_failed: {re.escape(message)}$", status.stdout, re.MULTILINE), status.stdout
    assert re.search(r"^hint\s+The provider could not make the edit", status.stdout, re.MULTILINE)
    assert job_id in aleph(stack, "list", "--state", "FAILED").stdout


def test_an_invalid_sidecar_fails_with_the_error_json_message(stack_clean: Stack, clip: Path, unique: str) -> None:
    done = aleph(stack_clean, "submit", str(clip), "--name", f"bad-{unique}", "--prompt", "p", "--set", "colour=red", "--wait")
    assert done.returncode == 1
    assert done.stderr.startswith("aleph: job ") and "FAILED: invalid_sidecar: unknown field `colour`" in done.stderr
    assert done.stderr.count("\n") == 1


def test_watch_follows_a_running_job_to_the_end(stack_clean: Stack, clip: Path, unique: str) -> None:
    stack = stack_clean
    stack.sim_config(hold=True)
    submitted = aleph(stack, "submit", str(clip), "--prompt", f"watch {unique}")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split("job ", 1)[1].strip()
    stack.wait_for_job(f"incoming/{clip.stem}.json", {"SUBMITTED"})
    watcher = subprocess.Popen(
        [sys.executable, "-m", "aleph_cli", "--local", str(stack.workdir), "watch", job_id, "--timeout", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "layers" / "domain")])},
    )
    try:
        assert watcher.stdout is not None
        first = watcher.stdout.readline()  # the watcher saw the job running before it was let go
        assert first.split()[-1] == "SUBMITTED", first
        stack.sim_config(hold=False)
        out, err = watcher.communicate(timeout=120)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 0, err
    assert "COMPLETED" in out
    assert out.rstrip().splitlines()[-1].startswith(f"output: s3://{stack.info['output_bucket']}/{clip.stem}/{job_id}/result")


def test_unknown_job_is_one_readable_line(stack: Stack) -> None:
    done = aleph(stack, "status", "f" * 32)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"aleph: no job {'f' * 32} in local ({stack.workdir / 'stack.json'})\n"
