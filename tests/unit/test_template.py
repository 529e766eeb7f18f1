"""What the code and the local stack rely on in template.yaml, and the sample events in events/."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest
from cfnlint.api import ManualArgs, lint_file
from cfnlint.decode import decode

from aleph_pipeline import budget

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "template.yaml"
EVENTS_DIR = ROOT / "events"

# contracts.md: the finalize stream mapping's one filter, exactly.
FINALIZE_PATTERN = {"eventName": ["INSERT", "MODIFY"], "dynamodb": {"NewImage": {"status": {"S": ["SUCCEEDED"]}}}}

# contracts.md: the variables every handler reads. CALLBACK_API_URL only where callback URLs are
# built (SubmitFunction): CallbackFunction cannot reference its own API without a cycle.
COMMON_ENV = {
    "JOBS_TABLE_NAME",
    "INPUT_BUCKET_NAME",
    "OUTPUT_BUCKET_NAME",
    "INPUT_PREFIX",
    "DEFAULT_PROVIDER",
    "PROVIDER_SECRET_ID",
    "PRESIGNED_URL_TTL_SECONDS",
    "PAIRING_TIMEOUT_SECONDS",
    "JOB_DEADLINE_SECONDS",
    "PROVIDER_RATE_LIMITS",
    "PACE_MAX_WAIT_SECONDS",
    "PROVIDER_CONCURRENCY",
    "RESULT_HOSTS",
    "ALLOW_HTTP_RESULT_URLS",
    "MAX_RESULT_BYTES",
    "PROVIDER_PRICES",
    "DAILY_BUDGET_USD",
    "MONTHLY_BUDGET_USD",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
}
FUNCTION_ENV = {
    "SubmitFunction": COMMON_ENV | {"CALLBACK_API_URL", "POLL_QUEUE_URL", "PACE_QUEUE_URL"},
    "CallbackFunction": COMMON_ENV,
    "FinalizeFunction": COMMON_ENV,
    "PollFunction": COMMON_ENV | {"POLL_QUEUE_URL"},
}
LOCAL_ONLY_ENV = {"PROVIDER_ENDPOINTS", "AWS_ENDPOINT_URL"}


def _plain(node: Any) -> Any:
    """cfn-lint's decoded nodes as plain dicts/lists/strings (tags become Ref/Fn::* keys)."""
    return json.loads(json.dumps(node, default=str))


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, matches = decode(str(TEMPLATE_PATH))
    assert not matches, [str(m) for m in matches]
    assert decoded is not None
    return _plain(decoded)


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return template["Resources"]


def _props(resources: dict[str, Any], name: str) -> dict[str, Any]:
    return resources[name]["Properties"]


def _function_props(template: dict[str, Any], name: str) -> dict[str, Any]:
    """A function's properties with Globals.Function merged in (SAM's rules for maps)."""
    merged = dict(template.get("Globals", {}).get("Function", {}))
    for key, value in _props(template["Resources"], name).items():
        if key == "Environment":
            variables = dict(merged.get("Environment", {}).get("Variables", {}))
            variables.update(value.get("Variables", {}))
            merged["Environment"] = {"Variables": variables}
        else:
            merged[key] = value
    return merged


def _references(node: Any) -> set[str]:
    """Logical ids a node points at through Ref, Fn::GetAtt or ${...} in Fn::Sub."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                target = value[0] if isinstance(value, list) else str(value).split(".")[0]
                found.add(target)
            elif key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value
                found.update(m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text))
                if isinstance(value, list):
                    found.update(_references(value[1]))
            else:
                found.update(_references(value))
    elif isinstance(node, list):
        for item in node:
            found.update(_references(item))
    return found


def _event_source(template: dict[str, Any], function: str, kind: str) -> dict[str, Any]:
    events = [e for e in _props(template["Resources"], function)["Events"].values() if e["Type"] == kind]
    assert len(events) == 1, f"{function} should have one {kind} event"
    return events[0]["Properties"]


def _named_event(template: dict[str, Any], function: str, name: str) -> dict[str, Any]:
    """The properties of ``function``'s event ``name`` (a function with two events of a kind)."""
    properties: dict[str, Any] = _props(template["Resources"], function)["Events"][name]["Properties"]
    return properties


# ------------------------------------------------------------------ lint and the SAM expansion


@pytest.fixture(scope="module")
def expanded() -> dict[str, Any]:
    """The template as SAM expands it (samtranslator in .venv-sam)."""
    from tools.sam_expand import SAM_PYTHON, expand_template

    if not SAM_PYTHON.is_file():
        pytest.skip(f"{SAM_PYTHON} not installed (make .venv-sam/.installed)")
    return expand_template(TEMPLATE_PATH)


def test_the_description_names_every_provider(template: dict[str, Any]) -> None:
    from aleph_pipeline.providers import PROVIDER_IDS

    description = template["Description"]
    named = {"kie": "kie.ai", "apikley": "apikley", "runware": "Runware", "crun": "crun.ai", "replicate": "Replicate", "runway": "Runway's own API"}
    assert set(PROVIDER_IDS) == set(named)
    assert all(name in description for name in named.values()), description


def test_cfn_lint_reports_nothing() -> None:
    matches = lint_file(TEMPLATE_PATH, ManualArgs(regions=["us-east-1"]))
    assert not matches, "\n".join(str(m) for m in matches)


# The property that names each kind of resource, where a fixed value would collide with the same
# resource of a second stack in the account and region. Resource kinds with no name of their own
# (or one unique only inside its parent) are listed in UNNAMED_TYPES; any other kind fails the
# test until it is put in one of the two.
NAME_PROPERTIES = {
    "AWS::Serverless::Function": "FunctionName",
    "AWS::Lambda::Function": "FunctionName",
    "AWS::Serverless::LayerVersion": "LayerName",
    "AWS::Lambda::LayerVersion": "LayerName",
    "AWS::DynamoDB::Table": "TableName",
    "AWS::SQS::Queue": "QueueName",
    "AWS::S3::Bucket": "BucketName",
    "AWS::IAM::Role": "RoleName",
    "AWS::IAM::ManagedPolicy": "ManagedPolicyName",
    "AWS::Events::Rule": "Name",
    "AWS::Scheduler::Schedule": "Name",
    "AWS::SNS::Topic": "TopicName",
    "AWS::SecretsManager::Secret": "Name",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::CloudWatch::Alarm": "AlarmName",
    "AWS::CloudWatch::Dashboard": "DashboardName",
    "AWS::Serverless::HttpApi": "Name",
    "AWS::ApiGatewayV2::Api": "Name",
}
UNNAMED_TYPES = {
    "AWS::S3::BucketPolicy",
    "AWS::SQS::QueuePolicy",
    "AWS::SNS::TopicPolicy",
    "AWS::SNS::Subscription",
    "AWS::Lambda::Permission",
    "AWS::Lambda::EventSourceMapping",
    "AWS::ApiGatewayV2::Stage",  # $default, unique within its API
    "AWS::IAM::RolePolicy",  # PolicyName is unique within its role
}
STACK_PSEUDO_PARAMETERS = {"AWS::StackName", "AWS::StackId"}


def _fixed_names(template: dict[str, Any]) -> dict[str, str]:
    """Resources whose name is the same in every stack: logical id -> why."""
    resources = template["Resources"]
    fixed: dict[str, str] = {}
    for logical_id, resource in resources.items():
        kind = resource["Type"]
        assert kind in NAME_PROPERTIES or kind in UNNAMED_TYPES, f"{logical_id}: decide how a {kind} is named (NAME_PROPERTIES or UNNAMED_TYPES)"
        if kind not in NAME_PROPERTIES:
            continue
        props = resource.get("Properties") or {}
        name = props.get(NAME_PROPERTIES[kind])
        if kind == "AWS::ApiGatewayV2::Api" and name is None:
            name = (props.get("Body") or {}).get("info", {}).get("title")  # SAM names an HttpApi by its OpenAPI title
        if name is None:
            continue
        # Unique per stack when built from the stack's name or id, or from a resource CloudFormation names.
        if not _references(name) & (STACK_PSEUDO_PARAMETERS | set(resources)):
            fixed[logical_id] = f"{NAME_PROPERTIES[kind]} {json.dumps(name)}"
    return fixed


def test_no_resource_has_a_fixed_name_so_two_stacks_can_coexist(template: dict[str, Any]) -> None:
    assert _fixed_names(template) == {}


def test_no_resource_sam_generates_has_a_fixed_name(expanded: dict[str, Any]) -> None:
    assert _fixed_names(expanded) == {}
    assert any(r["Type"] == "AWS::Scheduler::Schedule" for r in expanded["Resources"].values())


def test_a_fixed_name_is_caught() -> None:
    template = {
        "Resources": {
            "Queue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "jobs"}},
            "Rule": {"Type": "AWS::Scheduler::Schedule", "Properties": {"Name": {"Fn::Sub": "sweep-${Env}"}}},
            "Group": {"Type": "AWS::Logs::LogGroup", "Properties": {"LogGroupName": {"Fn::Sub": "/aws/${AWS::StackName}/x"}}},
            "Topic": {"Type": "AWS::SNS::Topic", "Properties": {}},
        }
    }
    assert set(_fixed_names(template)) == {"Queue", "Rule"}


def test_the_transformed_template_lints_clean(expanded: dict[str, Any], tmp_path: Path) -> None:
    transformed = tmp_path / "template.transformed.json"
    transformed.write_text(json.dumps(expanded), encoding="utf-8")
    matches = lint_file(transformed, ManualArgs(regions=["us-east-1"]))
    assert not matches, "\n".join(str(m) for m in matches)


# ------------------------------------------------------------------ buckets


def test_input_notification_is_prefix_only_into_submit_queue(resources: dict[str, Any]) -> None:
    queues = _props(resources, "InputBucket")["NotificationConfiguration"]["QueueConfigurations"]
    assert len(queues) == 1
    (config,) = queues
    assert config["Event"] == "s3:ObjectCreated:*"
    assert config["Queue"] == {"Fn::GetAtt": ["SubmitQueue", "Arn"]}
    rules = config["Filter"]["S3Key"]["Rules"]
    assert [rule["Name"].lower() for rule in rules] == ["prefix"], "no suffix filter: the code decides"
    assert rules[0]["Value"] == {"Ref": "InputPrefix"}


def test_input_bucket_waits_for_a_queue_policy_that_does_not_reference_it(resources: dict[str, Any]) -> None:
    depends_on = resources["InputBucket"].get("DependsOn")
    assert "SubmitQueuePolicy" in ([depends_on] if isinstance(depends_on, str) else depends_on)
    policy = _props(resources, "SubmitQueuePolicy")
    assert "InputBucket" not in _references(policy)
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
    source_arn = statement["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::Sub"]
    bucket_name = _props(resources, "InputBucket")["BucketName"]["Fn::Sub"]
    # The policy's SourceArn must name exactly the bucket InputBucket creates.
    assert source_arn[0] == "arn:${AWS::Partition}:s3:::" + bucket_name[0]
    assert source_arn[1] == bucket_name[1]


def test_bucket_names_are_short_and_lowercase(resources: dict[str, Any]) -> None:
    for name in ("InputBucket", "OutputBucket"):
        pattern, variables = _props(resources, name)["BucketName"]["Fn::Sub"]
        assert set(variables) == {"StackSuffix"}
        # Longest values: 12-digit account, a 14-character region, 8 hex characters of the stack UUID.
        worst = pattern.replace("${AWS::AccountId}", "1" * 12).replace("${AWS::Region}", "ap-southeast-5")
        worst = worst.replace("${StackSuffix}", "f" * 8)
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", worst), worst
        assert len(worst) <= 63


@pytest.mark.parametrize("bucket", ["InputBucket", "OutputBucket"])
def test_buckets_are_private_and_encrypted(resources: dict[str, Any], bucket: str) -> None:
    props = _props(resources, bucket)
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms", "aws:kms:dsse"}
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]


@pytest.mark.parametrize("bucket", ["InputBucket", "OutputBucket"])
def test_buckets_deny_plain_http(resources: dict[str, Any], bucket: str) -> None:
    policies = [
        _props(resources, name)
        for name, resource in resources.items()
        if resource["Type"] == "AWS::S3::BucketPolicy" and _props(resources, name)["Bucket"] == {"Ref": bucket}
    ]
    assert len(policies) == 1
    statements = policies[0]["PolicyDocument"]["Statement"]
    assert any(s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in statements)


def test_output_bucket_aborts_incomplete_multipart_uploads(resources: dict[str, Any]) -> None:
    rules = _props(resources, "OutputBucket")["LifecycleConfiguration"]["Rules"]
    assert any(r["Status"] == "Enabled" and r.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation") == 1 for r in rules)


# ------------------------------------------------------------------ table, queues, secret


def test_jobs_table(resources: dict[str, Any]) -> None:
    props = _props(resources, "JobsTable")
    assert resources["JobsTable"]["Type"] == "AWS::DynamoDB::Table"
    assert props["KeySchema"] == [{"AttributeName": "jobId", "KeyType": "HASH"}]
    types = {a["AttributeName"]: a["AttributeType"] for a in props["AttributeDefinitions"]}
    assert types == {"jobId": "S", "status": "S", "updatedAt": "S"}
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["SSESpecification"]["SSEEnabled"] is True
    (gsi,) = props["GlobalSecondaryIndexes"]
    assert gsi["IndexName"] == "by-status"
    assert gsi["KeySchema"] == [
        {"AttributeName": "status", "KeyType": "HASH"},
        {"AttributeName": "updatedAt", "KeyType": "RANGE"},
    ]
    assert gsi["Projection"] == {"ProjectionType": "ALL"}


def test_submit_queue(resources: dict[str, Any]) -> None:
    props = _props(resources, "SubmitQueue")
    submit_timeout = _props(resources, "SubmitFunction")["Timeout"]
    assert props["VisibilityTimeout"] >= 6 * submit_timeout
    assert props["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["SubmitDeadLetterQueue", "Arn"]},
        "maxReceiveCount": 5,
    }
    for queue in ("SubmitQueue", "SubmitDeadLetterQueue", "FinalizeDeadLetterQueue", "NotifyDeadLetterQueue", "UndeliveredJobEventQueue"):
        assert _props(resources, queue)["SqsManagedSseEnabled"] is True
    for dlq in ("SubmitDeadLetterQueue", "FinalizeDeadLetterQueue", "NotifyDeadLetterQueue", "UndeliveredJobEventQueue"):
        assert _props(resources, dlq)["MessageRetentionPeriod"] == 14 * 24 * 3600


def test_a_submit_batch_finishes_within_the_function_timeout(template: dict[str, Any]) -> None:
    # Each record makes at most one provider call, which can take the read timeout plus the
    # connect timeout: a whole batch of them must end before Lambda cuts the function off.
    from aleph_pipeline.providers import _http_client

    read_timeout = float(_function_props(template, "SubmitFunction")["Environment"]["Variables"]["PROVIDER_READ_TIMEOUT_SECONDS"])
    timeouts = _http_client(read_timeout).timeout
    read, connect = timeouts.read, timeouts.connect
    assert (read, connect) == (30.0, 5.0)
    assert read is not None and connect is not None
    batch_size = _named_event(template, "SubmitFunction", "InputObjectCreated")["BatchSize"]
    assert _named_event(template, "SubmitFunction", "JobsWaitingForASlot")["BatchSize"] == batch_size
    timeout = _props(template["Resources"], "SubmitFunction")["Timeout"]
    assert batch_size * (read + connect) < timeout
    assert (batch_size, timeout) == (3, 120)


def test_the_poll_loop_runs_on_its_own_queue_with_a_dead_letter_queue(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    queue = _props(resources, "PollQueue")
    assert queue["SqsManagedSseEnabled"] is True
    assert queue["VisibilityTimeout"] >= 6 * _props(resources, "PollFunction")["Timeout"]
    assert queue["RedrivePolicy"] == {"deadLetterTargetArn": {"Fn::GetAtt": ["PollDeadLetterQueue", "Arn"]}, "maxReceiveCount": 5}
    assert _props(resources, "PollDeadLetterQueue")["MessageRetentionPeriod"] == 14 * 24 * 3600
    source = _event_source(template, "PollFunction", "SQS")
    assert source["Queue"] == {"Fn::GetAtt": ["PollQueue", "Arn"]}
    assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # Each record is at most one provider call (30 s read + 5 s connect): a batch ends in time.
    assert source["BatchSize"] * 35 < _props(resources, "PollFunction")["Timeout"]
    # Whoever submits to a provider without webhooks starts the loop; the poll function continues it.
    for function in ("SubmitFunction", "ReconcileFunction", "PollFunction"):
        assert _function_props(template, function)["Environment"]["Variables"]["POLL_QUEUE_URL"] == {"Ref": "PollQueue"}
    assert "POLL_QUEUE_URL" not in template["Globals"]["Function"]["Environment"]["Variables"]


def test_the_stalled_queue_alarm_outlasts_every_retry(resources: dict[str, Any]) -> None:
    # A message retried until the DLQ lives maxReceiveCount x VisibilityTimeout (and a pace
    # message its delay, 900 s at most, before that): only a queue nobody reads keeps one longer.
    for name, delay in (("SubmitQueue", 0), ("PaceQueue", 900)):
        queue = _props(resources, name)
        alarm = _props(resources, f"{name}StalledAlarm")
        assert alarm["MetricName"] == "ApproximateAgeOfOldestMessage"
        assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [name, "QueueName"]}}]
        assert alarm["Threshold"] >= delay + queue["RedrivePolicy"]["maxReceiveCount"] * queue["VisibilityTimeout"]


def test_jobs_waiting_for_a_slot_have_a_queue_and_pollers_of_their_own(template: dict[str, Any]) -> None:
    # Behind a backlog of S3 notifications on SubmitQueue, a due retry would miss its slot.
    resources = template["Resources"]
    queue = _props(resources, "PaceQueue")
    assert queue["SqsManagedSseEnabled"] is True
    assert queue["VisibilityTimeout"] == _props(resources, "SubmitQueue")["VisibilityTimeout"]
    assert queue["RedrivePolicy"] == {"deadLetterTargetArn": {"Fn::GetAtt": ["SubmitDeadLetterQueue", "Arn"]}, "maxReceiveCount": 5}
    source = _named_event(template, "SubmitFunction", "JobsWaitingForASlot")
    assert source["Queue"] == {"Fn::GetAtt": ["PaceQueue", "Arn"]}
    assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert source["ScalingConfig"] == {"MaximumConcurrency": 5}
    sqs_events = {name for name, event in _props(resources, "SubmitFunction")["Events"].items() if event["Type"] == "SQS"}
    assert sqs_events == {"InputObjectCreated", "JobsWaitingForASlot"}
    # Whoever may put a job back to wait for its slot sends it here; nothing sends to SubmitQueue but S3.
    for function in ("SubmitFunction", "ReconcileFunction"):
        variables = _function_props(template, function)["Environment"]["Variables"]
        assert variables["PACE_QUEUE_URL"] == {"Ref": "PaceQueue"}
        assert "SUBMIT_QUEUE_URL" not in variables
    assert "PACE_QUEUE_URL" not in template["Globals"]["Function"]["Environment"]["Variables"]
    assert template["Outputs"]["PaceQueueUrl"]["Value"] == {"Ref": "PaceQueue"}


def test_provider_secret_placeholder_is_keyed_by_provider(resources: dict[str, Any], template: dict[str, Any]) -> None:
    placeholder = json.loads(_props(resources, "ProviderKeysSecret")["SecretString"])
    # Never changed: a changed SecretString would overwrite the keys users put in on the next
    # deploy. Providers added later (replicate, runway) are keys a team adds with its own.
    assert set(placeholder) == {"kie", "apikley", "runware", "crun"}
    assert set(placeholder) <= set(template["Parameters"]["DefaultProvider"]["AllowedValues"])
    assert all(value == "" for value in placeholder.values())


# ------------------------------------------------------------------ functions


@pytest.mark.parametrize("function", sorted(FUNCTION_ENV))
def test_functions_run_python312_or_later_on_arm64_with_the_layer(template: dict[str, Any], function: str) -> None:
    props = _function_props(template, function)
    major, minor = (int(part) for part in props["Runtime"].removeprefix("python").split("."))
    assert (major, minor) >= (3, 12)
    assert props["Architectures"] == ["arm64"]
    assert props["Handler"] == "app.lambda_handler"
    assert props["CodeUri"] == f"functions/{function.removesuffix('Function').lower()}/"
    assert {"Ref": "SharedLayer"} in props["Layers"]
    assert props["Tracing"] == "Active"


def test_layer_is_built_by_sam_for_arm64(resources: dict[str, Any]) -> None:
    layer = resources["SharedLayer"]
    assert layer["Properties"]["ContentUri"] == "layers/domain/"
    # Only what it is built for: BuildMethod python3.13 gives cp313 wheels (pydantic_core).
    assert layer["Properties"]["CompatibleRuntimes"] == [layer["Metadata"]["BuildMethod"]] == ["python3.13"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert layer["Metadata"] == {"BuildMethod": "python3.13", "BuildArchitecture": "arm64"}


@pytest.mark.parametrize("function", sorted(FUNCTION_ENV))
def test_functions_get_the_contract_environment(template: dict[str, Any], function: str) -> None:
    variables = _function_props(template, function)["Environment"]["Variables"]
    missing = FUNCTION_ENV[function] - set(variables)
    assert not missing, f"{function} lacks {sorted(missing)}"
    assert not LOCAL_ONLY_ENV & set(variables)
    assert variables["ALLOW_HTTP_RESULT_URLS"] == "false"
    assert variables["POWERTOOLS_SERVICE_NAME"] == "aleph-pipeline"
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == "AlephPipeline"
    assert variables["JOBS_TABLE_NAME"] == {"Ref": "JobsTable"}
    assert variables["PROVIDER_SECRET_ID"] == {"Ref": "ProviderKeysSecret"}


def test_callback_api_url_is_the_http_api_base(template: dict[str, Any]) -> None:
    url = _function_props(template, "SubmitFunction")["Environment"]["Variables"]["CALLBACK_API_URL"]
    assert url == {"Fn::Sub": "https://${CallbackApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}"}
    assert template["Outputs"]["CallbackApiUrl"]["Value"] == url


def test_callback_function_does_not_reference_its_api(template: dict[str, Any]) -> None:
    # CallbackApi's integration points at CallbackFunction: the reverse would be a cycle.
    assert "CallbackApi" not in _references(template.get("Globals", {}))
    props = dict(_props(template["Resources"], "CallbackFunction"))
    props.pop("Events")
    assert "CallbackApi" not in _references(props)


def test_submit_event_source(template: dict[str, Any]) -> None:
    source = _named_event(template, "SubmitFunction", "InputObjectCreated")
    assert source["Queue"] == {"Fn::GetAtt": ["SubmitQueue", "Arn"]}
    assert source["BatchSize"] == 3
    assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert source["ScalingConfig"] == {"MaximumConcurrency": 5}


def test_finalize_event_source(template: dict[str, Any]) -> None:
    source = _event_source(template, "FinalizeFunction", "DynamoDB")
    assert source["Stream"] == {"Fn::GetAtt": ["JobsTable", "StreamArn"]}
    assert source["StartingPosition"] == "LATEST"
    assert source["BatchSize"] == 5
    assert source["BisectBatchOnFunctionError"] is True
    assert source["MaximumRetryAttempts"] == 10
    assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert source["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["FinalizeDeadLetterQueue", "Arn"]}
    (only_filter,) = source["FilterCriteria"]["Filters"]
    assert json.loads(only_filter["Pattern"]) == FINALIZE_PATTERN
    props = _props(template["Resources"], "FinalizeFunction")
    assert props["Timeout"] == 900
    assert props["MemorySize"] == 1024


def test_callback_route(template: dict[str, Any]) -> None:
    source = _event_source(template, "CallbackFunction", "HttpApi")
    assert source["ApiId"] == {"Ref": "CallbackApi"}
    assert source["Method"] == "POST"
    assert source["Path"] == "/callbacks/{provider}/{jobId}"
    assert source["PayloadFormatVersion"] == "2.0"
    access_log = _props(template["Resources"], "CallbackApi").get("AccessLogSettings")
    if access_log:
        # The query string carries the per-job token: it must never be logged.
        assert "queryString" not in access_log["Format"]
        assert "rawQueryString" not in access_log["Format"]


@pytest.mark.parametrize("function", sorted(FUNCTION_ENV))
def test_functions_log_to_their_own_group_with_retention(template: dict[str, Any], function: str) -> None:
    group = _props(template["Resources"], function)["LoggingConfig"]["LogGroup"]["Ref"]
    assert template["Resources"][group]["Type"] == "AWS::Logs::LogGroup"
    assert _props(template["Resources"], group)["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert function not in _references(template["Resources"][group])


def test_outputs(template: dict[str, Any]) -> None:
    expected = {
        "InputBucketName",
        "OutputBucketName",
        "JobsTableName",
        "CallbackApiUrl",
        "SubmitQueueUrl",
        "PaceQueueUrl",
        "SubmitDeadLetterQueueUrl",
        "FinalizeDeadLetterQueueUrl",
        "ProviderKeysSecretArn",
        "SubmitFunctionName",
        "CallbackFunctionName",
        "FinalizeFunctionName",
    }
    assert expected <= set(template["Outputs"])


# ------------------------------------------------------------------ sample events

EVENT_FILES = sorted(EVENTS_DIR.rglob("*.json"))


def test_there_are_sample_events_for_every_function() -> None:
    assert {path.parent.name for path in EVENT_FILES} >= {"submit", "callback", "finalize"}


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda p: str(p.relative_to(EVENTS_DIR)))
def test_sample_event_is_json(path: Path) -> None:
    assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict)


@pytest.mark.parametrize("path", sorted((EVENTS_DIR / "submit").glob("*.json")), ids=lambda p: p.name)
def test_submit_events_are_sqs_messages_with_s3_bodies(path: Path) -> None:
    event = json.loads(path.read_text(encoding="utf-8"))
    for record in event["Records"]:
        assert record["eventSource"] == "aws:sqs"
        assert record["md5OfBody"] == hashlib.md5(record["body"].encode(), usedforsecurity=False).hexdigest()
        body = json.loads(record["body"])
        if body.get("Event") == "s3:TestEvent":
            continue
        for s3_record in body["Records"]:
            assert s3_record["eventName"].startswith("ObjectCreated:")
            assert s3_record["s3"]["bucket"]["name"] == "aleph-input"
            assert unquote_plus(s3_record["s3"]["object"]["key"]).startswith("incoming/")


def test_submit_event_keys_are_encoded_like_s3() -> None:
    event = json.loads((EVENTS_DIR / "submit" / "sidecar-created-space-and-plus.json").read_text(encoding="utf-8"))
    key = json.loads(event["Records"][0]["body"])["Records"][0]["s3"]["object"]["key"]
    assert key == "incoming/team-a/my+shot%2B1.json"
    assert unquote_plus(key) == "incoming/team-a/my shot+1.json"


def _matches(pattern: Any, value: Any) -> bool:
    """Enough of Lambda's event filtering for exact-value patterns: lists are allowed values."""
    if isinstance(pattern, list):
        return value in pattern
    return isinstance(value, dict) and all(k in value and _matches(p, value[k]) for k, p in pattern.items())


def test_finalize_filter_keeps_succeeded_and_drops_completed() -> None:
    kept = json.loads((EVENTS_DIR / "finalize" / "job-succeeded.json").read_text(encoding="utf-8"))
    dropped = json.loads((EVENTS_DIR / "finalize" / "job-completed-filtered-out.json").read_text(encoding="utf-8"))
    assert all(_matches(FINALIZE_PATTERN, record) for record in kept["Records"])
    assert not any(_matches(FINALIZE_PATTERN, record) for record in dropped["Records"])


@pytest.mark.parametrize("path", sorted((EVENTS_DIR / "callback").glob("*.json")), ids=lambda p: p.name)
def test_callback_events_are_http_api_v2(path: Path) -> None:
    event = json.loads(path.read_text(encoding="utf-8"))
    assert event["version"] == "2.0"
    assert event["routeKey"] == "POST /callbacks/{provider}/{jobId}"
    assert event["requestContext"]["http"]["method"] == "POST"
    provider, job_id = event["pathParameters"]["provider"], event["pathParameters"]["jobId"]
    assert event["rawPath"] == f"/callbacks/{provider}/{job_id}"
    json.loads(event["body"])


# ------------------------------------------------------------------ alarms


def _alarm_metrics(props: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(namespace, metric, watched logical id) of an alarm, a metric-math alarm's metrics included."""
    metrics = [props] if "MetricName" in props else [m["MetricStat"]["Metric"] for m in props.get("Metrics", []) if "MetricStat" in m]
    # A metric of the pipeline's own names its dimension's value (the budget alarms' `daily`), not a resource.
    return [(m["Namespace"], m["MetricName"], next(iter(_references(value)), str(value))) for m in metrics for value in [m["Dimensions"][0]["Value"]]]


def test_dead_letter_queues_and_function_errors_alarm_to_the_topic(resources: dict[str, Any], template: dict[str, Any]) -> None:
    alarms = {name: body["Properties"] for name, body in resources.items() if body["Type"] == "AWS::CloudWatch::Alarm"}
    watched = {metric for props in alarms.values() for metric in _alarm_metrics(props)}
    for queue in ("SubmitDeadLetterQueue", "FinalizeDeadLetterQueue", "NotifyDeadLetterQueue", "PollDeadLetterQueue"):
        assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible", queue) in watched
    assert ("AWS/SQS", "ApproximateAgeOfOldestMessage", "SubmitQueue") in watched
    assert ("AWS/SQS", "ApproximateAgeOfOldestMessage", "PaceQueue") in watched
    functions = [name for name, body in resources.items() if body["Type"] == "AWS::Serverless::Function"]
    assert len(functions) == 7
    for function in functions:
        assert ("AWS/Lambda", "Errors", function) in watched, f"{function} has no error alarm"
    assert all(props["AlarmActions"] == [{"Ref": "AlarmTopic"}] for props in alarms.values())
    for period in ("daily", "monthly"):
        assert ("AlephPipeline", "BudgetUsedPercent", period) in watched
    budget_alarms = [props for props in alarms.values() if props.get("MetricName") == "BudgetUsedPercent"]
    assert {props["Threshold"] for props in budget_alarms} == {budget.ALARM_PERCENT} and len(budget_alarms) == 2
    subscription = resources["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    assert template["Parameters"]["AlarmEmail"]["Default"] == ""


# ------------------------------------------------------------------ notifications and the status API


def test_notify_reads_exactly_the_terminal_transitions(template: dict[str, Any]) -> None:
    from local.event_filter import matches_any

    source = _event_source(template, "NotifyFunction", "DynamoDB")
    patterns = [json.loads(f["Pattern"]) for f in source["FilterCriteria"]["Filters"]]

    def record(old: str | None, new: str) -> dict[str, Any]:
        images: dict[str, Any] = {"NewImage": {"status": {"S": new}}}
        if old:
            images["OldImage"] = {"status": {"S": old}}
        return {"eventName": "MODIFY" if old else "INSERT", "dynamodb": images}

    assert matches_any(patterns, record("SUCCEEDED", "COMPLETED"))
    assert matches_any(patterns, record("RECEIVED", "FAILED"))
    assert not matches_any(patterns, record("FAILED", "FAILED"))
    assert not matches_any(patterns, record("RECEIVED", "SUBMITTED"))
    assert source["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["NotifyDeadLetterQueue", "Arn"]}
    props = _function_props(template, "NotifyFunction")
    assert {"EventBridgePutEventsPolicy": {"EventBusName": {"Ref": "EventBusName"}}} in props["Policies"]
    assert props["Environment"]["Variables"]["EVENT_BUS_NAME"] == {"Ref": "EventBusName"}


def test_notify_keeps_refused_events_and_publishes_them_again(template: dict[str, Any]) -> None:
    from aleph_pipeline.notifications import UNDELIVERED_QUEUE_ENV

    variables = _function_props(template, "NotifyFunction")["Environment"]["Variables"]
    assert variables[UNDELIVERED_QUEUE_ENV] == {"Ref": "UndeliveredJobEventQueue"}
    source = _event_source(template, "NotifyFunction", "SQS")
    assert source["Queue"] == {"Fn::GetAtt": ["UndeliveredJobEventQueue", "Arn"]}
    assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    queue = _props(template["Resources"], "UndeliveredJobEventQueue")
    assert "RedrivePolicy" not in queue  # kept until delivered (14 days), never dropped to a DLQ
    assert queue["VisibilityTimeout"] >= 6 * _props(template["Resources"], "NotifyFunction")["Timeout"]
    (alarm,) = [
        body["Properties"]
        for body in template["Resources"].values()
        if body["Type"] == "AWS::CloudWatch::Alarm" and any(m[2] == "UndeliveredJobEventQueue" for m in _alarm_metrics(body["Properties"]))
    ]
    # Visible, in flight and delayed all count: a message retried 3 times leaves the age metric.
    assert {m[1] for m in _alarm_metrics(alarm)} == {
        "ApproximateNumberOfMessagesVisible",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    }


def test_status_route_is_iam_authorised_and_the_callback_route_is_not(template: dict[str, Any]) -> None:
    status = _event_source(template, "StatusFunction", "HttpApi")
    assert (status["Method"], status["Path"], status["Auth"]) == ("GET", "/jobs/{jobId}", {"Authorizer": "AWS_IAM"})
    assert "Auth" not in _event_source(template, "CallbackFunction", "HttpApi")
    assert _props(template["Resources"], "CallbackApi")["Auth"] == {"EnableIamAuthorizer": True}


def test_email_notifications_exist_only_with_an_address(template: dict[str, Any]) -> None:
    assert template["Parameters"]["NotificationEmail"]["Default"] == ""
    assert template["Conditions"]["HasNotificationEmail"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "NotificationEmail"}, ""]}]}
    for name in ("NotificationTopic", "NotificationTopicPolicy", "NotificationRule"):
        assert template["Resources"][name]["Condition"] == "HasNotificationEmail"
    rule = _props(template["Resources"], "NotificationRule")
    assert rule["EventPattern"]["source"] == ["aleph.pipeline"]
    assert rule["Targets"][0]["Arn"] == {"Ref": "NotificationTopic"}


# ------------------------------------------------------------------ least privilege

# What each function's code calls (storage, JobStore and the secret, reached from its handler)
# and nothing else: (action, resource) with the resource as the logical id it names.
# GetObject also covers HeadObject and the presigned GET URLs signed with the role; every
# function that can fail a job writes its error.json (PutObject on the output bucket). SAM adds
# what the event sources need (stream and SQS polling, sqs:SendMessage on an on-failure
# destination), logging and X-Ray on its own.
TABLE = "JobsTable"
SECRET = ("secretsmanager:GetSecretValue", "ProviderKeysSecret")
ALLOWED_ACTIONS: dict[str, set[tuple[str, str]]] = {
    "SubmitFunction": {
        ("s3:GetObject", "InputBucket/*"),
        ("s3:ListBucket", "InputBucket"),
        ("s3:PutObject", "OutputBucket/*"),
        ("dynamodb:GetItem", TABLE),
        ("dynamodb:PutItem", TABLE),
        ("dynamodb:UpdateItem", TABLE),
        ("sqs:SendMessage", "PollQueue"),
        ("sqs:SendMessage", "PaceQueue"),
        SECRET,
    },
    "CallbackFunction": {("dynamodb:GetItem", TABLE), ("dynamodb:UpdateItem", TABLE), ("s3:PutObject", "OutputBucket/*"), SECRET},
    "FinalizeFunction": {
        ("dynamodb:GetItem", TABLE),
        ("dynamodb:UpdateItem", TABLE),
        ("s3:PutObject", "OutputBucket/*"),
        ("s3:AbortMultipartUpload", "OutputBucket/*"),
        ("s3:DeleteObject", "OutputBucket/*"),
        ("s3:ListBucket", "OutputBucket"),
        SECRET,
    },
    "ReconcileFunction": {
        ("dynamodb:GetItem", TABLE),
        ("dynamodb:UpdateItem", TABLE),
        ("dynamodb:Query", "JobsTable/index/by-status"),
        ("sqs:ReceiveMessage", "SubmitDeadLetterQueue"),
        ("sqs:DeleteMessage", "SubmitDeadLetterQueue"),
        ("sqs:SendMessage", "PollQueue"),
        ("sqs:SendMessage", "PaceQueue"),
        ("s3:GetObject", "InputBucket/*"),
        ("s3:ListBucket", "InputBucket"),
        ("s3:PutObject", "OutputBucket/*"),
        ("s3:GetObject", "OutputBucket/*"),
        ("s3:DeleteObject", "OutputBucket/*"),
        ("s3:ListBucket", "OutputBucket"),
        SECRET,
    },
    "StatusFunction": {("dynamodb:GetItem", TABLE), ("s3:GetObject", "OutputBucket/*")},
    "PollFunction": {
        ("dynamodb:GetItem", TABLE),
        ("dynamodb:UpdateItem", TABLE),
        ("s3:PutObject", "OutputBucket/*"),
        ("sqs:SendMessage", "PollQueue"),
        SECRET,
    },
    "NotifyFunction": {
        ("events:PutEvents", "EventBusName"),
        ("sqs:SendMessage*", "UndeliveredJobEventQueue"),
    },
}
# The SAM policy templates the template may use, as SAM expands them (action, the parameter
# naming the resource). Any other template (DynamoDBCrudPolicy, S3ReadPolicy...) fails the test.
SAM_POLICY_TEMPLATES = {
    "AWSSecretsManagerGetSecretValuePolicy": ("secretsmanager:GetSecretValue", "SecretArn"),
    "EventBridgePutEventsPolicy": ("events:PutEvents", "EventBusName"),
    "SQSSendMessagePolicy": ("sqs:SendMessage*", "QueueName"),
}


def _resource_name(node: Any) -> str:
    """A policy resource as the logical id it names: ``OutputBucket/*``, ``JobsTable/index/by-status``."""
    if isinstance(node, dict) and "Fn::Sub" in node and isinstance(node["Fn::Sub"], str):
        text = node["Fn::Sub"].removeprefix("arn:${AWS::Partition}:s3:::")
        return re.sub(r"\$\{([A-Za-z0-9]+)(\.Arn)?\}", r"\1", text)
    (name,) = _references(node)
    return name


def _granted(props: dict[str, Any]) -> set[tuple[str, str]]:
    granted: set[tuple[str, str]] = set()
    for policy in props.get("Policies", []):
        ((kind, body),) = policy.items()
        if kind == "Statement":
            for statement in body:
                assert statement["Effect"] == "Allow"
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                granted.update((action, _resource_name(resource)) for action in actions for resource in resources)
        else:
            assert kind in SAM_POLICY_TEMPLATES, f"{kind} grants more than the functions call: use explicit statements"
            action, parameter = SAM_POLICY_TEMPLATES[kind]
            granted.add((action, _resource_name(body[parameter])))
    return granted


@pytest.mark.parametrize("function", sorted(ALLOWED_ACTIONS))
def test_each_function_is_granted_exactly_what_it_calls(template: dict[str, Any], function: str) -> None:
    assert _granted(_props(template["Resources"], function)) == ALLOWED_ACTIONS[function]


# FinalizeFunction's grants for InputCleanup, each in a policy of its own that exists only in its mode.
INPUT_CLEANUP_GRANTS = {
    "tag": ("FinalizeTagInputsPolicy", {("s3:GetObjectTagging", "InputBucket/*"), ("s3:PutObjectTagging", "InputBucket/*")}),
    "delete": (
        "FinalizeDeleteInputsPolicy",
        {("s3:GetObject", "InputBucket/*"), ("s3:DeleteObject", "InputBucket/*"), ("dynamodb:Query", "JobsTable/index/by-status")},
    ),
}


def test_input_cleanup_grants_finalize_only_what_its_mode_needs(template: dict[str, Any]) -> None:
    resources, conditions = template["Resources"], template["Conditions"]
    parameter = template["Parameters"]["InputCleanup"]
    assert (parameter["Default"], parameter["AllowedValues"]) == ("none", ["none", "tag", "delete"])
    assert template["Globals"]["Function"]["Environment"]["Variables"]["INPUT_CLEANUP"] == {"Ref": "InputCleanup"}
    policies = {name for name, body in resources.items() if body["Type"] == "AWS::IAM::RolePolicy"}
    assert policies == {name for name, _ in INPUT_CLEANUP_GRANTS.values()}
    for mode, (name, expected) in INPUT_CLEANUP_GRANTS.items():
        assert conditions[resources[name]["Condition"]] == {"Fn::Equals": [{"Ref": "InputCleanup"}, mode]}
        assert _props(resources, name)["RoleName"] == {"Ref": "FinalizeFunctionRole"}
        assert _granted({"Policies": [{"Statement": _props(resources, name)["PolicyDocument"]["Statement"]}]}) == expected


def test_every_function_has_its_grants_pinned(resources: dict[str, Any]) -> None:
    assert {name for name, body in resources.items() if body["Type"] == "AWS::Serverless::Function"} == set(ALLOWED_ACTIONS)


def _dashboard_body(template: dict[str, Any]) -> dict[str, Any]:
    """The dashboard body with each ${X} of its Fn::Sub replaced by X (the resource it names)."""
    body = _props(template["Resources"], "OperationsDashboard")["DashboardBody"]["Fn::Sub"]
    assert isinstance(body, str)
    for reference in set(re.findall(r"\$\{([^}]+)\}", body)):
        assert reference.split(".")[0] in template["Resources"] or reference.startswith("AWS::"), reference
    document: dict[str, Any] = json.loads(re.sub(r"\$\{([^}]+)\}", r"\1", body))
    return document


def _dashboard_metrics(template: dict[str, Any]) -> set[tuple[str, str]]:
    """(namespace, metric name) of every metric the dashboard's widgets show."""
    named: set[tuple[str, str]] = set()
    for widget in _dashboard_body(template)["widgets"]:
        for row in widget["properties"]["metrics"]:
            if isinstance(row[0], dict):  # a SEARCH expression: {namespace,dimension,...} MetricName="..."
                found = re.fullmatch(r"SEARCH\('\{([^,}]+)[^}]*\} MetricName=\"(\w+)\"', '\w+', \d+\)", row[0]["expression"])
                assert found, row[0]["expression"]
                named.add((found[1], found[2]))
            else:
                named.add((row[0], row[1]))
    return named


def test_the_dashboard_shows_every_catalogued_metric_and_no_other_of_ours(template: dict[str, Any]) -> None:
    from aleph_pipeline.telemetry import CATALOGUE

    namespace = template["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"]
    named = _dashboard_metrics(template)
    ours = {name for space, name in named if space == namespace}
    assert ours == set(CATALOGUE)
    assert {space for space, _ in named} - {namespace} <= {"AWS/SQS", "AWS/Lambda"}


def test_the_dashboard_searches_each_metric_by_its_catalogued_dimensions(template: dict[str, Any]) -> None:
    from aleph_pipeline.telemetry import CATALOGUE

    for widget in _dashboard_body(template)["widgets"]:
        for row in widget["properties"]["metrics"]:
            if isinstance(row[0], dict):
                keys, name = re.findall(r"\{([^}]*)\} MetricName=\"(\w+)\"", row[0]["expression"])[0]
                # Powertools adds the service dimension to every line.
                assert sorted(keys.split(",")[1:]) == sorted([*CATALOGUE[name].dimensions, "service"]), name


def test_the_dashboard_watches_the_submit_and_pace_queues_each_dlq_and_every_function(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    rows = [row for widget in _dashboard_body(template)["widgets"] for row in widget["properties"]["metrics"] if isinstance(row[0], str)]
    queues = {row[3].removesuffix(".QueueName") for row in rows if row[0] == "AWS/SQS"}
    dlqs = {name for name, resource in resources.items() if resource["Type"] == "AWS::SQS::Queue" and name not in {"SubmitQueue", "PaceQueue", "PollQueue"}}
    assert queues == dlqs | {"SubmitQueue", "PaceQueue"}
    functions = {name for name, resource in resources.items() if resource["Type"] == "AWS::Serverless::Function"}
    for metric in ("Errors", "Throttles"):
        assert {row[3] for row in rows if row[:2] == ["AWS/Lambda", metric]} == functions, metric
    assert {row[1] for row in rows if row[0] == "AWS/SQS"} == {"ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage"}


def test_the_dashboard_url_is_a_stack_output(template: dict[str, Any]) -> None:
    url = template["Outputs"]["DashboardUrl"]["Value"]["Fn::Sub"]
    assert url.endswith("#dashboards/dashboard/${OperationsDashboard}")
