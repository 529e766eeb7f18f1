"""A function's sandboxes in the local stack (local/lambda_runtime.py): a process each, one invocation at a time.

Lambda never runs two invocations at once in one execution environment, so a library's
process-wide state (Powertools' resolver keeps the current event in a class attribute) is safe
there. These tests run handlers through ``LambdaFunction`` and show the same holds locally: two
concurrent invocations never share a process, a busy function cold-starts another sandbox and
an idle one is reused, and a killed, hung or crashed sandbox is replaced by a fresh process.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from local import lambda_runtime
from local.apigw import build_http_event
from local.aws_faults import parse_config, rng_for
from local.client import wait_for
from tests.integration.test_aws_faults import BUCKET, resources  # noqa: F401 - the fixture: a moto server with BUCKET
from tests.integration.test_local_stack import _function, _stop_functions  # noqa: F401 - the fixture stops the functions

WAIT = 30.0  # seconds; every wait below is bounded by this

# A provider callback route the way the callback function has it: Powertools' HTTP API resolver.
RESOLVER = """
import json, time

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response

app = APIGatewayHttpResolver()


@app.post("/callbacks/<provider>/<job_id>")
def callback(provider, job_id):
    time.sleep(0.01)  # another invocation in this process would overwrite app.current_event now
    token = (app.current_event.query_string_parameters or {}).get("token")
    return Response(status_code=200, content_type="application/json", body=json.dumps({"job": job_id, "token": token}))


def lambda_handler(event, context):
    return app.resolve(event, context)
"""

# Keeps its event in a module the handler imports (one per process, like any library's state),
# says it started, then waits for the test's gate before answering what that module holds.
GATED = """
import json, os, pathlib, time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

import gated_state


def _put(endpoint, key):
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=Config(retries={"max_attempts": 0}))
    try:
        client.put_object(Bucket=%(bucket)r, Key=key, Body=b"x")
    except ClientError as exc:
        return exc.response["Error"]["Code"]
    return None


def lambda_handler(event, context):
    gated_state.current = event["n"]
    if event.get("crash"):
        os._exit(3)
    started = pathlib.Path(event["started"])
    (started / str(event["n"])).write_text(str(os.getpid()))
    gate = pathlib.Path(event["gate"])
    deadline = time.monotonic() + event.get("hold", 20)
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # the gate is another process's file: nothing to wait on but its presence
    codes = [_put(event["endpoint"], f"sandbox/{event['n']}/{i}") for i in range(event.get("puts", 0))]
    return {"n": gated_state.current, "pid": os.getpid(), "codes": codes, "marker": os.environ.get("ALEPH_MARKER")}
"""


class Gated:
    """A function running GATED, and the files its invocations meet at."""

    def __init__(self, tmp_path: Path, endpoint: str = "", **kwargs: Any) -> None:
        self.started = tmp_path / "started"
        self.started.mkdir()
        self.gate = tmp_path / "gate"
        self.endpoint = endpoint
        (tmp_path / "gated_state.py").write_text("current = None\n")
        self.function = _function(tmp_path, "gated", GATED % {"bucket": BUCKET}, **kwargs)

    def event(self, n: int, **extra: Any) -> dict[str, Any]:
        return {"n": n, "started": str(self.started), "gate": str(self.gate), "endpoint": self.endpoint, **extra}

    def at_once(self, count: int, **extra: Any) -> list[dict[str, Any]]:
        """``count`` invocations held until all of them run (so all at once), then let go."""
        self.gate.unlink(missing_ok=True)
        for marker in self.started.iterdir():
            marker.unlink()
        with ThreadPoolExecutor(count) as pool:
            futures = [pool.submit(self.function.invoke, self.event(n, **extra)) for n in range(count)]
            wait_for(lambda: len(list(self.started.iterdir())) == count or None, WAIT, message=f"{count} invocations running at once")
            self.gate.touch()
            invocations = [future.result(WAIT) for future in futures]
        for invocation in invocations:
            assert invocation.ok, invocation.error
        return [invocation.result for invocation in invocations]

    def alone(self, n: int, **extra: Any) -> dict[str, Any]:
        self.gate.touch()
        invocation = self.function.invoke(self.event(n, **extra))
        assert invocation.ok, invocation.error
        result: dict[str, Any] = invocation.result
        return result


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_concurrent_resolver_invocations_each_see_their_own_event(tmp_path: Path) -> None:
    function = _function(tmp_path, "callback", RESOLVER, max_concurrency=8)
    assert function.warm()

    def callback(n: int) -> Any:
        event = build_http_event(
            route_key="POST /callbacks/{provider}/{jobId}",
            method="POST",
            raw_path=f"/callbacks/kie/job-{n}",
            raw_query=f"token=token-{n}",
            headers=[("content-type", "application/json")],
            body=b"{}",
            source_ip="127.0.0.1",
            path_parameters={"provider": "kie", "jobId": f"job-{n}"},
            api_id="local",
            request_id=str(n),
        )
        invocation = function.invoke(event)
        assert invocation.ok, invocation.error
        return json.loads(invocation.result["body"])

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(callback, range(400)))
    wrong = [(n, answer) for n, answer in enumerate(answers) if answer != {"job": f"job-{n}", "token": f"token-{n}"}]
    assert wrong == [], f"{len(wrong)} of 400 answers carry another invocation's event, e.g. {wrong[:3]}"
    assert 1 < len(function.sandbox_pids()) <= 8


def test_module_globals_are_not_shared_between_concurrent_invocations(tmp_path: Path) -> None:
    gated = Gated(tmp_path, max_concurrency=2)
    answers = gated.at_once(2)
    assert [answer["n"] for answer in answers] == [0, 1]  # the module each one set is its own
    assert answers[0]["pid"] != answers[1]["pid"]


def test_a_busy_function_cold_starts_a_second_sandbox_and_reuses_an_idle_one(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    gated = Gated(tmp_path, max_concurrency=2, environment={"ALEPH_MARKER": marker})
    gated.function.start()
    assert gated.function.warm()
    (first,) = gated.function.sandbox_pids()
    assert gated.alone(0)["pid"] == gated.alone(1)["pid"] == first  # one at a time: the warm sandbox
    answers = gated.at_once(2)
    pids = {answer["pid"] for answer in answers}
    assert first in pids and len(pids) == 2  # the second ran in a new process
    assert [answer["marker"] for answer in answers] == [marker, marker]  # with the function's environment
    assert gated.function.sandbox_pids() == sorted(pids)
    assert gated.alone(2)["pid"] in pids  # both idle now: no third process
    assert gated.function.sandbox_pids() == sorted(pids)


def test_each_sandbox_draws_its_own_seeded_faults_and_the_function_adds_them_up(tmp_path: Path, resources: str) -> None:  # noqa: F811
    config = parse_config({"seed": 7, "rules": [{"fault": "s3_500", "rate": 0.5}]})
    gated = Gated(tmp_path, endpoint=resources, max_concurrency=2, aws_faults=config)
    codes = [tuple(answer["codes"]) for answer in gated.at_once(2, puts=24)]

    def drawn(sandbox: int) -> tuple[str | None, ...]:
        rng = rng_for(7, "gated", sandbox)
        return tuple("InternalError" if rng.random() < 0.5 else None for _ in range(24))

    assert drawn(1) != drawn(2)
    assert set(codes) == {drawn(1), drawn(2)}  # one sandbox's draws each
    report = gated.function.fault_report()
    assert report is not None
    assert (report["rules"][0]["eligible"], report["rules"][0]["applied"]) == (48, sum(code is not None for run in codes for code in run))


def test_a_killed_invocation_ends_its_sandbox_process(tmp_path: Path, resources: str) -> None:  # noqa: F811
    config = parse_config({"seed": 7, "rules": [{"fault": "kill", "rate": 1.0, "services": ["s3"]}]})
    gated = Gated(tmp_path, endpoint=resources, max_concurrency=2, aws_faults=config)
    killed_pid = gated.alone(0)["pid"]  # no AWS call: nothing to cut off
    invocation = gated.function.invoke({**gated.event(1), "puts": 1})
    assert not invocation.ok and invocation.error is not None and invocation.error.startswith("Task timed out after 60.00 seconds")
    wait_for(lambda: _gone(killed_pid), WAIT, message=f"the killed sandbox's process {killed_pid} to end")
    assert gated.alone(2)["pid"] != killed_pid
    report = gated.function.fault_report()
    assert report is not None and report["rules"][0]["applied"] == 1  # the ended process's count is kept


def test_a_hung_invocation_ends_its_sandbox_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lambda_runtime, "INVOKE_GRACE_SECONDS", 0.5)
    gated = Gated(tmp_path, timeout_seconds=1)
    gated.gate.unlink(missing_ok=True)
    invocation = gated.function.invoke(gated.event(0, hold=WAIT))  # waits for a gate never opened
    assert not invocation.ok and invocation.error == "Task timed out after 1.00 seconds"
    hung_pid = int((gated.started / "0").read_text())
    wait_for(lambda: _gone(hung_pid), WAIT, message=f"the hung sandbox's process {hung_pid} to end")
    assert gated.alone(1)["pid"] != hung_pid


def test_a_crashed_sandbox_is_replaced_on_the_next_invocation(tmp_path: Path) -> None:
    gated = Gated(tmp_path)
    crashed_pid = gated.alone(0)["pid"]
    invocation = gated.function.invoke(gated.event(1, crash=True))
    assert not invocation.ok and invocation.error is not None and invocation.error.startswith("Runtime.ExitError")
    assert "exited with code 3" in invocation.error
    answer = gated.alone(2)
    assert answer["pid"] != crashed_pid and answer["n"] == 2
    assert gated.function.sandbox_pids() == [answer["pid"]]
