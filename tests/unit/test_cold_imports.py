"""What the handlers' cold path leaves out: Powertools' batch utility and event data classes (asyncio
and all of Powertools' ~40 event data classes), and pydantic, which the layer does not ship."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from bench.coldstart import HANDLER_ENV, cold_path
from local.client import REPO_ROOT

NOT_IMPORTED = ("asyncio", "aws_lambda_powertools.utilities.batch", "aws_lambda_powertools.utilities.data_classes")


@pytest.mark.parametrize("handler", ["submit", "poll", "finalize", "notify"])
def test_a_batch_handler_cold_path_imports_neither_asyncio_nor_powertools_batch_nor_data_classes(handler: str) -> None:
    code = (
        "import sys\n"
        "sys.path[:0] = sys.argv[3:]\n"
        "for module in sys.argv[1].split(','): __import__(module)\n"
        "unwanted = sys.argv[2].split(',')\n"
        "print('aleph_pipeline.batches' in sys.modules)\n"
        "print(' '.join(sorted(m for m in sys.modules if any(m == u or m.startswith(u + '.') for u in unwanted))))\n"
    )
    paths = [str(REPO_ROOT / "functions" / handler), str(REPO_ROOT / "layers" / "domain")]
    env = {"PATH": os.environ.get("PATH", ""), **HANDLER_ENV}
    args = [sys.executable, "-c", code, ",".join(cold_path(handler)), ",".join(NOT_IMPORTED), *paths]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    uses_batches, unwanted = (done.stdout + "\n").split("\n")[:2]
    assert uses_batches == "True"  # the partial batch responses come from the domain instead
    assert unwanted.split() == []


def test_no_function_or_layer_module_imports_pydantic() -> None:
    # The layer does not ship pydantic (layers/domain/requirements.txt): an import of it anywhere
    # the functions run would fail in Lambda. Its models live in schemas/, for docs and tests.
    importing = []
    for path in sorted([*(REPO_ROOT / "layers" / "domain").rglob("*.py"), *(REPO_ROOT / "functions").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name.split(".")[0] in {"pydantic", "pydantic_core", "schemas"} for name in names):
                importing.append(str(path.relative_to(REPO_ROOT)))
    assert importing == []
    requirements = (REPO_ROOT / "layers" / "domain" / "requirements.txt").read_text().splitlines()
    assert not [line for line in requirements if line.startswith("pydantic")]


def test_handlers_answer_and_a_sidecar_is_validated_where_pydantic_cannot_be_imported() -> None:
    # What Lambda runs without pydantic in the layer: a sidecar checked, the status API's 422 and the
    # callback API's 404 answered (neither reads AWS), with any import of pydantic refused.
    code = """
import json, sys
sys.modules["pydantic"] = sys.modules["pydantic_core"] = None  # importing either raises ImportError
sys.path[:0] = sys.argv[1:]
import importlib.util
from aleph_pipeline.errors import JobError
from aleph_pipeline.sidecar import parse_sidecar
sidecar, _ = parse_sidecar(b'{"prompt": " make it snow ", "seed": 7, "frameImages": [{"image": "a.png", "frame": "first"}]}')
print(sidecar.prompt, sidecar.seed, sidecar.frame_images[0].frame)
try:
    parse_sidecar(b'{"prompt": "x", "seed": "7"}')
except JobError as error:
    print(error.code)
class Context:
    function_name, memory_limit_in_mb, invoked_function_arn, aws_request_id = "f", 512, "arn:aws:lambda:us-east-1:1:function:f", "r"
def handler(name):
    spec = importlib.util.spec_from_file_location(name + "_app", f"functions/{name}/app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lambda_handler
status = json.load(open("events/status/get-job.json"))
status["pathParameters"]["jobId"] = "NOT-A-JOB"
status["rawPath"] = status["requestContext"]["http"]["path"] = "/jobs/NOT-A-JOB"
print(handler("status")(status, Context())["statusCode"])
callback = json.load(open("events/callback/kie-shape-a-success.json"))
callback["pathParameters"]["provider"] = "nobody"
print(handler("callback")(callback, Context())["statusCode"])
"""
    env = {"PATH": os.environ.get("PATH", ""), **HANDLER_ENV, "POWERTOOLS_LOG_LEVEL": "ERROR"}
    paths = [str(REPO_ROOT / "layers" / "domain")]
    done = subprocess.run([sys.executable, "-c", code, *paths], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:4] == ["make it snow 7 first", "invalid_sidecar", "422", "404"]
