"""AWS-side faults of the local stack (local/aws_faults.py), over a real moto server.

A small handler (run through ``LambdaFunction`` in a process of its own, like the stack runs
the real ones, with the faults installed there for that function) makes the AWS calls an event
asks for and reports what botocore made of them: the error code, the HTTP status and the
retries. One test runs a whole stack subprocess with ``--aws-faults``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest

from local.aws_faults import AwsFaultsError, parse_config, rng_for
from local.client import aws_client, wait_for
from local.lambda_runtime import LambdaFunction
from local.stack import spawn, terminate
from tests.integration.test_local_stack import _function, _stop_functions  # noqa: F401 - the fixture stops the functions

WAIT = 30.0  # seconds; every wait below is bounded by this
BUCKET = "faults-bucket"
TABLE = "faults-table"
SECRET = "faults/secret"

CALLER = """
import concurrent.futures, uuid

import boto3, httpx
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = {endpoint!r}
SANDBOX = uuid.uuid4().hex  # one per sandbox (a process of its own)


def _call(call):
    # botocore's max_attempts is the number of retries after the first attempt
    config = Config(retries={{"mode": "standard", "max_attempts": call.get("retries", 1)}})
    client = boto3.client(call["service"], endpoint_url=ENDPOINT, region_name="us-east-1", config=config)
    try:
        response = getattr(client, call["op"])(**call.get("params", {{}}))
    except ClientError as exc:
        meta = exc.response["ResponseMetadata"]
        return {{
            "code": exc.response["Error"]["Code"],
            "message": exc.response["Error"].get("Message"),
            "status": meta["HTTPStatusCode"],
            "retries": meta["RetryAttempts"],
            "request_id": meta.get("RequestId"),
        }}
    meta = response["ResponseMetadata"]
    return {{"code": None, "status": meta["HTTPStatusCode"], "retries": meta["RetryAttempts"]}}


def lambda_handler(event, context):
    try:
        if event.get("threaded"):
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                outcomes = list(pool.map(_call, event["calls"]))
        else:
            outcomes = [_call(call) for call in event.get("calls", [])]
        if event.get("http"):
            httpx.get(event["http"], timeout=5)
    finally:
        if event.get("finally"):
            _call(event["finally"])  # cleanup: a killed invocation must not get here
    return {{"sandbox": SANDBOX, "outcomes": outcomes}}
"""


@pytest.fixture(scope="module")
def resources(moto_server: str) -> str:
    """The bucket, table and secret the callers use, on the session's moto server (another module
    that uses this fixture finds them made already)."""
    s3, dynamodb = aws_client("s3", endpoint_url=moto_server), aws_client("dynamodb", endpoint_url=moto_server)
    s3.create_bucket(Bucket=BUCKET)  # idempotent in us-east-1
    s3.put_object(Bucket=BUCKET, Key="present", Body=b"x")
    if TABLE not in dynamodb.list_tables()["TableNames"]:
        dynamodb.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    secrets = aws_client("secretsmanager", endpoint_url=moto_server)
    if not secrets.list_secrets(Filters=[{"Key": "name", "Values": [SECRET]}])["SecretList"]:
        secrets.create_secret(Name=SECRET, SecretString="{}")
    return moto_server


CALLER_NAME = "caller"
Caller = Callable[..., LambdaFunction]


@pytest.fixture
def caller(tmp_path: Path, resources: str) -> Caller:
    """``caller(*rules, seed=7)``: a new function running CALLER with those faults (none: no faults)."""

    def make(*rules: dict[str, Any], seed: int = 7, name: str = CALLER_NAME) -> LambdaFunction:
        config = parse_config({"seed": seed, "rules": list(rules)}) if rules else None
        code_dir = tmp_path / uuid.uuid4().hex[:8]
        code_dir.mkdir()
        return _function(code_dir, name, CALLER.format(endpoint=resources), aws_faults=config)

    return make


@pytest.fixture
def objects(resources: str) -> Any:
    return aws_client("s3", endpoint_url=resources)


def run(function: LambdaFunction, **event: Any) -> dict[str, Any]:
    invocation = function.invoke(event)
    assert invocation.ok, invocation.error
    result: dict[str, Any] = invocation.result
    return result


GET = {"service": "s3", "op": "get_object", "params": {"Bucket": BUCKET, "Key": "present"}}
HEAD = {"service": "s3", "op": "head_object", "params": {"Bucket": BUCKET, "Key": "present"}}
PUT_ITEM = {"service": "dynamodb", "op": "put_item", "params": {"TableName": TABLE, "Item": {"id": {"S": "a"}}}}
GET_SECRET = {"service": "secretsmanager", "op": "get_secret_value", "params": {"SecretId": SECRET}}


def put(key: str) -> dict[str, Any]:
    return {"service": "s3", "op": "put_object", "params": {"Bucket": BUCKET, "Key": key, "Body": "x"}}


def seed_hitting_first_only(rate: float, misses: int) -> int:
    """A seed whose first draw (in CALLER's first sandbox) is under ``rate`` and the next ``misses`` are not."""
    for seed in range(100_000):
        rng = rng_for(seed, CALLER_NAME, 1)
        if rng.random() < rate and all(rng.random() >= rate for _ in range(misses)):
            return seed
    raise AssertionError("no such seed")


# ---------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("config", "names"),
    [
        ({"rules": [{"fault": "s3_404", "rate": 0.1}]}, "rules[0].fault"),
        ({"rules": [{"fault": "s3_500", "rate": 1.5}]}, "rules[0].rate"),
        ({"rules": [{"fault": "s3_500", "rate": "often"}]}, "rules[0].rate"),
        ({"rules": [{"fault": "s3_500"}]}, "rules[0].rate"),
        ({"rules": [{"fault": "s3_500", "rate": 0.1}, {"fault": "kill", "rate": 0.1, "when": "now"}]}, "rules[1]: unknown field(s) 'when'"),
        ({"rules": [{"fault": "s3_500", "rate": 0.1, "services": ["dynamodb"]}]}, "rules[0].services"),
        ({"rules": [{"fault": "s3_500", "rate": 0.1, "burst": -1}]}, "rules[0].burst"),
        ({"rules": [{"fault": "kill", "rate": 0.1, "functions": []}]}, "rules[0].functions"),
        ({"seed": "seven", "rules": []}, "seed"),
        ({"rule": []}, "'rule'"),
    ],
)
def test_a_bad_configuration_is_refused_naming_the_field(config: dict[str, Any], names: str) -> None:
    with pytest.raises(AwsFaultsError, match="aws-faults") as error:
        parse_config(json.dumps(config))
    assert names in str(error.value)


# ---------------------------------------------------------------------- error shapes


@pytest.mark.parametrize(
    ("fault", "call", "codes", "status"),
    [
        ("s3_500", GET, {"InternalError"}, 500),
        ("s3_500", HEAD, {"500"}, 500),  # HEAD errors have no body: botocore names them by status
        ("s3_slowdown", put("shape"), {"SlowDown"}, 503),
        ("dynamodb_throttle", PUT_ITEM, {"ProvisionedThroughputExceededException", "ThrottlingException"}, 400),
        ("dynamodb_500", PUT_ITEM, {"InternalServerError"}, 500),
        ("secrets_error", GET_SECRET, {"InternalServiceError", "ThrottlingException"}, None),
    ],
)
def test_each_fault_reaches_the_handler_as_the_services_error_once_retries_are_exhausted(
    caller: Caller, fault: str, call: dict[str, Any], codes: set[str], status: int | None
) -> None:
    function = caller({"fault": fault, "rate": 0.5, "burst": 10}, seed=seed_hitting_first_only(0.5, 0))
    (outcome,) = run(function, calls=[{**call, "retries": 2}])["outcomes"]
    assert outcome["code"] in codes
    assert outcome["retries"] == 2  # botocore took it for a real error and retried it
    expected_status = status or {"InternalServiceError": 500, "ThrottlingException": 400}[outcome["code"]]
    assert outcome["status"] == expected_status
    if call is not HEAD:  # (botocore keeps no request id of a HEAD error)
        assert outcome["request_id"]  # parsed from the service's own request-id header
    if call is GET:
        assert outcome["message"] == "We encountered an internal error. Please try again."


def test_retries_absorb_a_single_fault_and_a_burst_gets_through(caller: Caller, objects: Any) -> None:
    seed = seed_hitting_first_only(0.3, 10)
    absorbing = caller({"fault": "s3_slowdown", "rate": 0.3}, seed=seed)
    (absorbed,) = run(absorbing, calls=[put("absorbed")])["outcomes"]
    assert absorbed == {"code": None, "status": 200, "retries": 1}
    assert report(absorbing)["rules"][0]["applied"] == 1
    bursting = caller({"fault": "s3_slowdown", "rate": 0.3, "burst": 1}, seed=seed)
    (surfaced,) = run(bursting, calls=[put("burst")])["outcomes"]
    assert surfaced["code"] == "SlowDown" and surfaced["retries"] == 1
    assert report(bursting)["rules"][0] == {"fault": "s3_slowdown", "rate": 0.3, "burst": 1, "applied": 2, "eligible": 1}
    with pytest.raises(objects.exceptions.ClientError, match="Not Found"):
        objects.head_object(Bucket=BUCKET, Key="burst")  # an injected error never reaches moto


def report(function: LambdaFunction) -> dict[str, Any]:
    counts = function.fault_report()
    assert counts is not None
    return counts


def test_the_same_seed_gives_the_same_faults(caller: Caller) -> None:
    calls = [{**put(f"seeded-{n}"), "retries": 0} for n in range(24)]

    def codes(seed: int, name: str = CALLER_NAME) -> list[str | None]:
        function = caller({"fault": "s3_500", "rate": 0.5}, seed=seed, name=name)
        return [outcome["code"] for outcome in run(function, calls=calls)["outcomes"]]

    first = codes(7)
    assert first == codes(7)
    assert first != codes(8)
    assert first != codes(7, name="other")  # each function draws from its own generator
    assert set(first) == {None, "InternalError"}


def test_faults_reach_the_threads_a_handler_starts(caller: Caller) -> None:
    outcomes = run(caller({"fault": "s3_500", "rate": 1.0}), threaded=True, calls=[put("thread-1"), put("thread-2")])["outcomes"]
    assert [o["code"] for o in outcomes] == ["InternalError", "InternalError"]


def test_faults_never_hit_the_harness_or_other_functions(caller: Caller, resources: str) -> None:
    every_fault = [{"fault": name, "rate": 1.0, "functions": [CALLER_NAME]} for name in ("s3_500", "dynamodb_500", "secrets_error", "kill")]
    target, other = caller(*every_fault), caller(*every_fault, name="other")
    assert not target.invoke({"calls": [GET]}).ok
    # The test's own clients, while the functions' processes inject faults.
    aws_client("s3", endpoint_url=resources).head_object(Bucket=BUCKET, Key="present")
    aws_client("dynamodb", endpoint_url=resources).describe_table(TableName=TABLE)
    aws_client("secretsmanager", endpoint_url=resources).get_secret_value(SecretId=SECRET)
    outcomes = run(other, calls=[GET, PUT_ITEM, GET_SECRET])["outcomes"]
    assert [o["code"] for o in outcomes] == [None, None, None]
    assert sum(rule["eligible"] for rule in report(target)["rules"]) > 0
    assert sum(rule["eligible"] for rule in report(other)["rules"]) == 0


# ------------------------------------------------------------------------------ kills


def test_a_killed_invocation_fails_like_a_timeout_and_its_sandbox_is_replaced(caller: Caller, objects: Any) -> None:
    function = caller({"fault": "kill", "rate": 1.0, "services": ["s3"]})
    before = run(function)["sandbox"]
    assert run(function)["sandbox"] == before  # a warm sandbox is reused
    key, cleanup = f"killed-{uuid.uuid4().hex}", f"cleanup-{uuid.uuid4().hex}"
    invocation = function.invoke({"calls": [put(key)], "finally": put(cleanup)})
    assert not invocation.ok
    assert invocation.error is not None and invocation.error.startswith("Task timed out after 60.00 seconds")
    assert "s3.PutObject" in invocation.error
    objects.head_object(Bucket=BUCKET, Key=key)  # the call was made; the handler never saw its answer
    with pytest.raises(objects.exceptions.ClientError, match="Not Found"):
        objects.head_object(Bucket=BUCKET, Key=cleanup)  # a dead invocation makes no more calls
    assert report(function)["rules"][0]["applied"] == 1
    assert run(function)["sandbox"] != before


def test_a_kill_after_a_provider_http_call(caller: Caller, resources: str) -> None:
    function = caller({"fault": "kill", "rate": 1.0, "services": ["http"]})
    assert run(function, calls=[GET])["outcomes"][0]["code"] is None  # AWS calls are not in the rule
    invocation = function.invoke({"http": f"{resources}/moto-api/"})
    assert not invocation.ok and invocation.error is not None and "HTTP GET 127.0.0.1" in invocation.error


@pytest.fixture
def killing_stack(tmp_path: Path) -> Iterator[tuple[dict[str, Any], Path]]:
    handler = tmp_path / "submit.py"
    handler.write_text(
        """
import os, uuid

import boto3

SANDBOX = uuid.uuid4().hex


def lambda_handler(event, context):
    s3 = boto3.client("s3")
    for record in event["Records"]:
        if "s3:TestEvent" in record["body"]:  # S3's check of the notification, not an upload
            continue
        key = f"seen/{record['messageId']}/{record['attributes']['ApproximateReceiveCount']}-{SANDBOX}"
        s3.put_object(Bucket=os.environ["OUTPUT_BUCKET_NAME"], Key=key, Body=b"")
    return {"batchItemFailures": []}
"""
    )
    rules = {"seed": 3, "rules": [{"fault": "kill", "rate": 1.0, "functions": ["submit"], "services": ["s3"]}]}
    workdir = tmp_path / "work"
    args = ["--no-simulator", "--quiet", "--sqs-time-scale", "0.002", "--handler", f"submit={handler}", "--aws-faults", json.dumps(rules)]
    process, info = spawn(workdir, *args, timeout=60)
    try:
        yield info, workdir
    finally:
        assert terminate(process) == 0, (workdir / "stack.log").read_text()


def test_a_killed_batch_is_redelivered_to_a_fresh_sandbox(killing_stack: tuple[dict[str, Any], Path]) -> None:
    info, workdir = killing_stack
    s3 = aws_client("s3", info)
    key = f"incoming/killed-{uuid.uuid4().hex[:8]}.json"
    s3.put_object(Bucket=info["input_bucket"], Key=key, Body=b"{}")  # the harness's own call: never faulted

    def deliveries() -> list[str] | None:
        listed = s3.list_objects_v2(Bucket=info["output_bucket"], Prefix="seen/").get("Contents", [])
        names = [unquote_plus(o["Key"]) for o in listed]
        return names if len({name.split("/")[2].split("-")[0] for name in names}) >= 2 else None

    seen = wait_for(deliveries, WAIT, message="the killed batch delivered again")
    assert len({name.split("/")[1] for name in seen}) == 1  # one message, delivered again
    sandboxes = [name.split("-", 1)[1] for name in seen]
    assert len(set(sandboxes)) == len(sandboxes)  # every delivery ran in a new sandbox
    assert info["aws_faults_report"] == str(workdir / "aws-faults.json")

    def kills() -> int | None:
        report = json.loads(Path(info["aws_faults_report"]).read_text())
        return report["rules"][0]["applied"] if report["rules"][0]["applied"] >= 2 else None

    wait_for(kills, WAIT, message="the kills counted in aws-faults.json")
    wait_for(lambda: "Task timed out" in (workdir / "stack.log").read_text(), WAIT, message="the timeout in the stack's log")
