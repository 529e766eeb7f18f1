"""What the local stack reads from template.yaml is what SAM's own expansion makes of it.

local/template_config.py reads the SAM template directly, so the stack starts without the
translator environment; this test holds it to the real transform (samtranslator from .venv-sam):
each function's merged environment, timeout, memory and handler, its event source mappings,
routes (and their authorizer) and schedules.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from local.template_config import TemplateConfig, load_template_config
from tools.sam_expand import SAM_PYTHON, code_folder, expand_template

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def expanded() -> dict[str, Any]:
    if not SAM_PYTHON.is_file():
        pytest.skip(f"{SAM_PYTHON} not installed (make .venv-sam/.installed)")
    return expand_template(ROOT / "template.yaml")


@pytest.fixture(scope="module")
def config() -> TemplateConfig:
    loaded = load_template_config(ROOT / "template.yaml")
    assert loaded.source is not None and not loaded.warnings, loaded.warnings
    return loaded


def _functions(expanded: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Function folder name -> (logical id, transformed properties)."""
    found = {}
    for logical_id, resource in expanded["Resources"].items():
        if resource["Type"] == "AWS::Lambda::Function":
            folder = code_folder(resource["Properties"]["Code"])
            assert folder is not None
            found[folder.rstrip("/").rsplit("/", 1)[-1]] = (logical_id, resource["Properties"])
    return found


def _target(value: Any) -> str | None:
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return str(value["Fn::GetAtt"][0])
    if isinstance(value, dict) and "Ref" in value:
        return str(value["Ref"])
    return None


def test_the_same_functions_with_the_environment_sam_merges(expanded: dict[str, Any], config: TemplateConfig) -> None:
    functions = _functions(expanded)
    assert set(functions) == set(config.functions)
    for name, (_, props) in functions.items():
        spec = config.functions[name]
        assert json.loads(json.dumps(dict(spec.environment))) == props["Environment"]["Variables"], name
        assert (spec.timeout_seconds, spec.memory_mb, spec.handler) == (props["Timeout"], props["MemorySize"], props["Handler"]), name


def test_event_source_mappings_are_read_as_sam_makes_them(expanded: dict[str, Any], config: TemplateConfig) -> None:
    by_logical_id = {logical_id: name for name, (logical_id, _) in _functions(expanded).items()}
    mappings = [r["Properties"] for r in expanded["Resources"].values() if r["Type"] == "AWS::Lambda::EventSourceMapping"]
    assert mappings
    for mapping in mappings:
        spec = config.functions[by_logical_id[mapping["FunctionName"]["Ref"]]]
        source = mapping["EventSourceArn"]["Fn::GetAtt"]
        report_failures = "ReportBatchItemFailures" in mapping.get("FunctionResponseTypes", [])
        if source[1] == "StreamArn":
            stream = spec.stream
            assert stream is not None
            assert [json.loads(f["Pattern"]) for f in mapping["FilterCriteria"]["Filters"]] == list(stream.filters)
            assert (stream.batch_size, stream.maximum_retry_attempts, stream.bisect_on_error) == (
                mapping["BatchSize"],
                mapping["MaximumRetryAttempts"],
                mapping["BisectBatchOnFunctionError"],
            )
            assert stream.starting_position == mapping["StartingPosition"] and stream.report_batch_item_failures is report_failures
            assert stream.on_failure_ref == _target(mapping["DestinationConfig"]["OnFailure"]["Destination"])
        else:
            (sqs,) = [candidate for candidate in spec.sqs_sources if candidate.queue_ref == source[0]]
            assert (sqs.queue_ref, sqs.batch_size, sqs.maximum_concurrency) == (source[0], mapping["BatchSize"], mapping["ScalingConfig"]["MaximumConcurrency"])
            assert sqs.report_batch_item_failures is report_failures


def test_routes_and_their_authorizer_are_the_apis_paths(expanded: dict[str, Any], config: TemplateConfig) -> None:
    by_logical_id = {logical_id: name for name, (logical_id, _) in _functions(expanded).items()}
    routes = set()
    for resource in expanded["Resources"].values():
        if resource["Type"] != "AWS::ApiGatewayV2::Api":
            continue
        for path, methods in resource["Properties"]["Body"]["paths"].items():
            for method, operation in methods.items():
                uri = operation["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]
                (function,) = re.findall(r"\$\{(\w+)\.Arn\}", uri)
                authorizer = "AWS_IAM" if {"AWS_IAM": []} in operation.get("security", []) else None
                routes.add((by_logical_id[function], method.upper(), path, authorizer))
    read = {(name, r.method, r.path, r.authorizer) for name, spec in config.functions.items() for r in spec.routes}
    assert read == routes and routes


def test_schedules_are_the_scheduler_resources(expanded: dict[str, Any], config: TemplateConfig) -> None:
    by_logical_id = {logical_id: name for name, (logical_id, _) in _functions(expanded).items()}
    schedules = {
        (by_logical_id[r["Properties"]["Target"]["Arn"]["Fn::GetAtt"][0]], r["Properties"]["ScheduleExpression"])
        for r in expanded["Resources"].values()
        if r["Type"] == "AWS::Scheduler::Schedule"
    }
    read = {(name, s.expression) for name, spec in config.functions.items() for s in spec.schedules}
    assert read == schedules == {("reconcile", "rate(5 minutes)")}
