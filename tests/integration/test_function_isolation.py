"""Each function of the local stack on its own, like Lambda (a stack subprocess, moto over HTTP).

Every function runs in a process of its own with only what its template entry gives it: these
tests read the environment the handlers really get, make the guard name a variable the template
forgets, record the AWS calls of a real submit, and run a real job against a provider
implementation the stack did not start (the simulator, started here with keys of its own).
"""

from __future__ import annotations

import contextlib
import json
import os
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from local.client import REPO_ROOT, aws_client, wait_for
from local.lambda_runtime import LAYER_PATHS
from local.media import make_clip
from local.simulator.config import parse_keys
from local.simulator.server import SimulatorServer
from local.stack import LOCAL_PROVIDERS, spawn, terminate

WAIT = 30.0  # seconds; every wait below is bounded by this
JOB_WAIT = 90.0

# The runtime variables the stack's functions get besides their own environment.
RUNTIME_VARIABLES = {
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "_HANDLER",
    "LAMBDA_TASK_ROOT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_EC2_METADATA_DISABLED",
    "POWERTOOLS_TRACE_DISABLED",
    "PATH",
    "LANG",
    "TZ",
    "PYTHONPATH",
    "PYTHONUNBUFFERED",
}

# Writes what the process really has, reads the domain's settings like the real reconcile does.
_RECORDER = """
import json, os, pathlib, uuid

OUT = pathlib.Path({out!r})


def lambda_handler(event, context):
    from aleph_pipeline.config import get_settings

    settings = get_settings()
    read = {{name: getattr(settings, name) for name in {fields!r}}}
    print("plain line from", {name!r})
    print(json.dumps({{"level": "INFO", "message": "json line"}}))
    document = {{"pid": os.getpid(), "env": dict(os.environ), "read": read}}
    (OUT / (uuid.uuid4().hex + ".json")).write_text(json.dumps(document))
    return {{"batchItemFailures": []}}
"""


@dataclass
class Recorded:
    info: dict[str, Any]
    workdir: Path
    documents: dict[str, list[dict[str, Any]]]


def _fake(root: Path, name: str, fields: list[str]) -> Path:
    out = root / f"{name}-out"
    out.mkdir(parents=True)
    path = root / name / "app.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(_RECORDER.format(out=str(out), name=name, fields=fields)))
    return path


def _documents(root: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted((root / f"{name}-out").glob("*.json"))]


@contextlib.contextmanager
def _run_fakes(root: Path, template: Path, *extra: str) -> Iterator[Recorded]:
    """A stack with recording submit and reconcile handlers; one submit and one reconcile run."""
    handlers = {"submit": _fake(root, "submit", ["callback_api_url"]), "reconcile": _fake(root, "reconcile", RECONCILE_READS)}
    args = ["--no-simulator", "--template", str(template), "--schedule-interval", "0.3", "--strict-env", *extra]
    for name, path in handlers.items():
        args += ["--handler", f"{name}={path}"]
    env = {**os.environ, "ALEPH_ONLY_IN_THE_TEST_RUNNER": "leaked"}
    workdir = root / "work"
    process, info = spawn(workdir, *args, env=env, timeout=60)
    try:
        aws_client("s3", info).put_object(Bucket=info["input_bucket"], Key=f"{info['input_prefix']}a-{uuid.uuid4().hex[:6]}.json", Body=b"{}")
        wait_for(lambda: _documents(root, "submit"), WAIT, message="a submit invocation")
        yield Recorded(info, workdir, {name: _documents(root, name) for name in handlers})
    finally:
        assert terminate(process) == 0, (workdir / "stack.log").read_text()


# What the real reconcile reads: two wiring fields its entry defines, one tunable it leaves default.
RECONCILE_READS = ["callback_api_url", "submit_dead_letter_queue_url", "finalize_grace_seconds"]


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    root = tmp_path_factory.mktemp("isolated")
    with _run_fakes(root, REPO_ROOT / "template.yaml") as recorded:
        recorded.documents["reconcile"] = wait_for(lambda: _documents(root, "reconcile"), WAIT, message="a reconcile run")
        yield recorded


def test_each_function_has_a_process_and_exactly_its_own_environment(isolated: Recorded) -> None:
    info = isolated.info
    (submit, *_), (reconcile, *_) = isolated.documents["submit"], isolated.documents["reconcile"]
    assert len({submit["pid"], reconcile["pid"], info["pid"]}) == 3
    for name, document in (("submit", submit), ("reconcile", reconcile)):
        env = document["env"]
        assert set(env) - {"LC_CTYPE"} == RUNTIME_VARIABLES | set(info["function_env"][name]), name  # (LC_CTYPE: Python's own locale coercion)
        assert "ALEPH_ONLY_IN_THE_TEST_RUNNER" not in env
        handler_dir = Path(info["functions"][name]).parent
        assert env["PYTHONPATH"] == os.pathsep.join([str(handler_dir), *(str(path) for path in LAYER_PATHS)])
        assert (env["AWS_LAMBDA_FUNCTION_NAME"], env["LAMBDA_TASK_ROOT"]) == (f"aleph-{name}", str(handler_dir))
        assert env["AWS_ENDPOINT_URL"] == info["s3_endpoint"] and env["CALLBACK_API_URL"] == info["api_url"]
    # Only the reconciler's entry gives it the dead-letter queue; Globals give both the table.
    assert reconcile["env"]["SUBMIT_DEAD_LETTER_QUEUE_URL"] == info["submit_dlq_url"]
    assert "SUBMIT_DEAD_LETTER_QUEUE_URL" not in submit["env"]
    assert submit["env"]["JOBS_TABLE_NAME"] == reconcile["env"]["JOBS_TABLE_NAME"] == "aleph-jobs"
    assert "UNDELIVERED_EVENT_QUEUE_URL" in info["function_env"]["notify"] and "UNDELIVERED_EVENT_QUEUE_URL" not in submit["env"]
    assert "CALLBACK_API_URL" not in info["function_env"]["finalize"]  # its entry does not define it


def _env_reads(workdir: Path, function: str) -> dict[str, Any]:
    """env-reads.json once it names something ``function`` read (the stack writes it every 2 s)."""

    def written() -> dict[str, Any] | None:
        reads: dict[str, Any] = json.loads((workdir / "env-reads.json").read_text())
        return reads if reads["functions"].get(function) else None

    return wait_for(written, WAIT, message=f"env-reads.json naming a read of {function}")


def test_the_real_template_gives_every_read_wiring_variable(isolated: Recorded) -> None:
    reads = _env_reads(isolated.workdir, "reconcile")
    assert reads["strict"] is True
    assert reads["functions"]["submit"] == []
    # A tunable left at its product default is recorded, not refused.
    assert reads["functions"]["reconcile"] == [{"variable": "FINALIZE_GRACE_SECONDS", "field": "finalize_grace_seconds", "wiring": False}]
    assert isolated.info["env_reads_report"] == str(isolated.workdir / "env-reads.json")


def test_each_log_line_carries_its_own_function(isolated: Recorded) -> None:
    lines = (isolated.workdir / "stack.log").read_text().splitlines()
    assert "[submit] plain line from submit" in lines
    assert "[reconcile] plain line from reconcile" in lines
    tagged = [json.loads(line) for line in lines if line.startswith('{"function"')]
    assert {"function": "submit", "level": "INFO", "message": "json line"} in tagged
    assert {"function": "reconcile", "level": "INFO", "message": "json line"} in tagged


def test_the_guard_names_a_variable_the_template_does_not_give(tmp_path: Path) -> None:
    text = (REPO_ROOT / "template.yaml").read_text()
    dead_letter = text.index("SUBMIT_DEAD_LETTER_QUEUE_URL: !Ref SubmitDeadLetterQueue")
    line_start = text.rindex("\n", 0, text.rindex("CALLBACK_API_URL:", 0, dead_letter)) + 1
    line_end = text.index("\n", line_start) + 1
    assert "CALLBACK_API_URL: !Sub" in text[line_start:line_end]
    template = tmp_path / "template.yaml"
    template.write_text(text[:line_start] + text[line_end:])  # reconcile without CALLBACK_API_URL

    with _run_fakes(tmp_path, template) as recorded:
        assert "CALLBACK_API_URL" not in recorded.info["function_env"]["reconcile"]
        log = recorded.workdir / "stack.log"
        message = "Runtime.UndefinedVariable: reconcile reads CALLBACK_API_URL (Settings.callback_api_url), which its template entry does not define"
        wait_for(lambda: message in log.read_text(), WAIT, message="the refused reconcile run in the log")
        assert _documents(tmp_path, "reconcile") == []  # strict: the read failed the invocation
        reads = _env_reads(recorded.workdir, "reconcile")
        assert {"variable": "CALLBACK_API_URL", "field": "callback_api_url", "wiring": True} in reads["functions"]["reconcile"]
        assert reads["functions"]["submit"] == []


# -------------------------------------------------- real handlers, another provider implementation

KEYS = {"kie": "other-kie-key", "apikley": "other-apikley-key", "runware": "other-runware-key", "crun": "other-crun-key"}


@dataclass
class Job:
    info: dict[str, Any]
    workdir: Path
    job: dict[str, Any]
    provider: SimulatorServer


@pytest.fixture(scope="module")
def job_elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Job]:
    """A real job through every real function, against a simulator this test started with its own keys."""
    root = tmp_path_factory.mktemp("elsewhere")
    keys_file = root / "keys.json"
    keys_file.write_text(json.dumps(KEYS))
    with SimulatorServer("127.0.0.1", 0, keys=parse_keys(KEYS)) as provider:
        httpx.post(f"{provider.url}/_sim/config", json={"delay_seconds": 0}, timeout=10).raise_for_status()
        workdir = root / "work"
        args = ["--provider-url", provider.url, "--provider-keys", str(keys_file), "--record-aws-calls", "--strict-env"]
        process, info = spawn(workdir, *args, timeout=60)
        try:
            s3, table = aws_client("s3", info), aws_client("dynamodb", info)
            stem = f"{info['input_prefix']}elsewhere-{uuid.uuid4().hex[:8]}"
            s3.put_object(Bucket=info["input_bucket"], Key=f"{stem}.mp4", Body=make_clip(root / "clip.mp4", seconds=6).read_bytes())
            s3.put_object(Bucket=info["input_bucket"], Key=f"{stem}.json", Body=json.dumps({"prompt": "a red car", "provider": "kie"}).encode())

            def finished() -> dict[str, Any] | None:
                items = table.scan(TableName=info["jobs_table"], ConsistentRead=True)["Items"]
                done = [item for item in items if item.get("status", {}).get("S") in ("COMPLETED", "FAILED")]
                return done[0] if done else None

            job = wait_for(finished, JOB_WAIT, interval=0.3, message="the job to finish")
            yield Job(info, workdir, job, provider)
        finally:
            assert terminate(process) == 0, (workdir / "stack.log").read_text()[-4000:]


def test_every_provider_is_reached_at_the_given_url_with_the_given_keys(job_elsewhere: Job) -> None:
    info, provider = job_elsewhere.info, job_elsewhere.provider
    assert job_elsewhere.job["status"]["S"] == "COMPLETED", job_elsewhere.job.get("error")
    assert info["simulator_url"] is None and info["provider_url"] == provider.url
    assert "simulator" not in info["logs"]  # the stack started no simulator of its own
    assert json.loads(info["handler_env"]["PROVIDER_ENDPOINTS"]) == {p: f"{provider.url}/{p}" for p in LOCAL_PROVIDERS}
    assert json.loads(info["handler_env"]["RESULT_HOSTS"]) == {p: ["127.0.0.1"] for p in LOCAL_PROVIDERS}
    secret = aws_client("secretsmanager", info).get_secret_value(SecretId=info["secret_id"])
    assert json.loads(secret["SecretString"]) == KEYS
    tasks = httpx.get(f"{provider.url}/_sim/tasks", timeout=10).json()
    assert tasks  # the job's task, taken with the keys file's key (the only one this provider knows)


def test_a_submit_records_its_aws_calls(job_elsewhere: Job) -> None:
    info = job_elsewhere.info
    assert info["aws_calls_log"] == str(job_elsewhere.workdir / "aws-calls.jsonl")
    text = Path(info["aws_calls_log"]).read_text()
    assert not any(key in text for key in KEYS.values())  # secrets are never written
    calls = [json.loads(line) for line in text.splitlines()]
    submit = [(c["service"], c["operation"], c["presigned"]) for c in calls if c["function"] == "submit"]
    assert ("s3", "HeadObject", False) in submit or ("s3", "GetObject", False) in submit
    assert ("s3", "GetObject", True) in submit  # the presigned input URL given to the provider
    assert ("secretsmanager", "GetSecretValue", False) in submit
    assert any(service == "dynamodb" for service, _, _ in submit)
    secret_calls = [c for c in calls if c["service"] == "secretsmanager"]
    assert {tuple(sorted(c["params"])) for c in secret_calls} == {("SecretId",)}
    assert all(c["params"]["SecretId"] == info["secret_id"] for c in secret_calls)
    tables = {c["params"].get("TableName") for c in calls if c["service"] == "dynamodb"}
    assert tables == {info["jobs_table"]}
    assert {c["function"] for c in calls} >= {"submit", "callback", "finalize"}


def test_the_real_handlers_read_no_variable_their_entries_do_not_define(job_elsewhere: Job) -> None:
    reads = json.loads((job_elsewhere.workdir / "env-reads.json").read_text())
    wiring = {name: [r["variable"] for r in found if r["wiring"]] for name, found in reads["functions"].items()}
    assert wiring == {name: [] for name in reads["functions"]}
    assert "Runtime.UndefinedVariable" not in (job_elsewhere.workdir / "stack.log").read_text()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('["sk-secret-looking-value"]', "expected a JSON object keyed by provider id"),
        ('{"kie": "sk-secret-looking-value", "openai": "x"}', "unknown provider id(s) 'openai'"),
        ('{"kie": "sk-secret-looking-value",', "not valid JSON"),
        ('{"kie": ""}', "no key for kie"),
    ],
)
def test_a_bad_keys_file_is_refused_without_showing_a_key(tmp_path: Path, content: str, expected: str) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(content)
    with pytest.raises(RuntimeError) as error:
        spawn(tmp_path / "work", "--provider-url", "http://127.0.0.1:9", "--provider-keys", str(keys_file), timeout=30)
    assert expected in str(error.value)
    assert "sk-secret-looking-value" not in str(error.value)
