"""Cold start: the whole import cost of a handler's cold invocation, against ``import boto3``.

The Lambda Python runtime has boto3, so ``import boto3`` is the floor a handler cannot go under
once it talks to AWS. A cold invocation pays the handler module's init and then whatever its
first invocation imports (a function-level import in ``app.py``, and boto3, which every handler
uses and ``clients.py`` imports on first use): Lambda bills and waits for both, so the figure is
one, that whole cold path, and the target is 1.5x the floor for every handler in ``functions/``.

To be faithful to Lambda, the children do not see this repository's development environment
(moto, click, pytest... would change what some libraries import): they run ``python -S`` with
``sys.path`` = the function's directory, ``layers/domain`` (the layer's code) and
``bench/.runtime-<version>``, a directory holding exactly the layer's requirements plus boto3 (installed
once with ``pip install --target``, like ``sam build`` does). Each target is imported once first
so its bytecode is compiled (not counted), then 10 rounds run every target in a shuffled order
(a noisy moment on a shared machine hits all of them alike); the median counts. The clock is the
child's CPU time: importing is CPU work, and on a shared machine the wall clock mostly measures
how long the other processes kept the CPU (a Lambda sandbox has its CPU share to itself).

The children run the Python version of the template's ``Runtime`` (``python3.13``) when one is on
``PATH`` or under pyenv: import costs change from one version to the next. Otherwise they run this
interpreter, and the report says so.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import median, save, table, verdict
from local.client import REPO_ROOT

TEMPLATE = REPO_ROOT / "template.yaml"
HANDLERS = tuple(sorted(app.parent.name for app in (REPO_ROOT / "functions").glob("*/app.py")))
ROUNDS = 10
TARGET = 1.5
# The handlers' environment as the template's Globals give it (values are placeholders).
HANDLER_ENV = {
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
    "JOBS_TABLE_NAME": "aleph-jobs",
    "INPUT_BUCKET_NAME": "aleph-input",
    "OUTPUT_BUCKET_NAME": "aleph-output",
    "INPUT_PREFIX": "incoming/",
    "DEFAULT_PROVIDER": "kie",
    "PROVIDER_SECRET_ID": "arn:aws:secretsmanager:us-east-1:123456789012:secret:aleph-provider-keys",
    "PRESIGNED_URL_TTL_SECONDS": "3600",
    "PAIRING_TIMEOUT_SECONDS": "3600",
    "JOB_DEADLINE_SECONDS": "86400",
    "RESULT_HOSTS": "{}",
    "ALLOW_HTTP_RESULT_URLS": "false",
    "MAX_RESULT_BYTES": "2147483648",
    "CALLBACK_API_URL": "https://abc123.execute-api.us-east-1.amazonaws.com",
    "POWERTOOLS_SERVICE_NAME": "aleph-pipeline",
    "POWERTOOLS_METRICS_NAMESPACE": "AlephPipeline",
    "POWERTOOLS_LOG_LEVEL": "INFO",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "LOG_LEVEL": "INFO",
}
_CHILD = """
import sys, time
sys.path[:0] = [p for p in sys.argv[2:] if p]
started = time.process_time()
for module in sys.argv[1].split(","):
    __import__(module)
print(time.process_time() - started)
"""


def lambda_runtime() -> str:
    """The template's ``Runtime`` (``python3.13``): the version Lambda runs the handlers on."""
    found = re.search(r"^\s+Runtime:\s*(python3\.\d+)\s*$", TEMPLATE.read_text(encoding="utf-8"), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no python Runtime in {TEMPLATE}")
    return found.group(1)


def child_python() -> tuple[str, str]:
    """(interpreter, its version "3.13"): the Lambda runtime's version if this machine has it
    (on PATH, or under pyenv), else this interpreter's."""
    wanted = lambda_runtime().removeprefix("python")
    on_path = shutil.which(f"python{wanted}")
    pyenv = sorted(Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")).glob(f"versions/{wanted}.*/bin/python{wanted}"))
    for candidate in [on_path, *map(str, pyenv)]:
        if candidate and subprocess.run([candidate, "-c", "import pip"], capture_output=True, check=False).returncode == 0:
            return candidate, wanted
    return sys.executable, f"{sys.version_info.major}.{sys.version_info.minor}"


PYTHON, PYTHON_VERSION = child_python()
# Packages with compiled parts (pydantic-core) are built per Python version: a directory each.
RUNTIME = REPO_ROOT / "bench" / f".runtime-{PYTHON_VERSION}"


def _requirements() -> list[str]:
    boto3 = next(line.split("#")[0].strip() for line in (REPO_ROOT / "requirements-dev.txt").read_text().splitlines() if line.startswith("boto3=="))
    return [boto3, "-r", str(REPO_ROOT / "layers" / "domain" / "requirements.txt")]


def ensure_runtime() -> Path:
    """``bench/.runtime-<version>``: boto3 and the layer's requirements, nothing else (re-made when they change)."""
    stamp = hashlib.sha256(json.dumps([PYTHON, _requirements(), (REPO_ROOT / "layers/domain/requirements.txt").read_text()]).encode()).hexdigest()
    marker = RUNTIME / ".stamp"
    if marker.is_file() and marker.read_text() == stamp:
        return RUNTIME
    if RUNTIME.exists():
        subprocess.run(["rm", "-rf", str(RUNTIME)], check=True)
    print(f"installing boto3 and the layer's requirements into {RUNTIME.relative_to(REPO_ROOT)} ...", file=sys.stderr, flush=True)
    subprocess.run(
        [PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", str(RUNTIME), *_requirements()],
        check=True,
    )
    marker.write_text(stamp)
    return RUNTIME


def first_use_imports(handler: str) -> list[str]:
    """What a handler's first invocation imports beyond its init: the modules its ``app.py``
    imports inside a function, then boto3 (every handler calls AWS; ``clients.py`` imports it then)."""
    return [*function_level_imports((REPO_ROOT / "functions" / handler / "app.py").read_text(encoding="utf-8")), "boto3"]


def function_level_imports(source: str) -> list[str]:
    """The absolute modules ``source`` imports inside its functions, in order, each once."""
    tree = ast.parse(source)
    deferred: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and inner.module and not inner.level:
                    deferred.append(inner.module)
                elif isinstance(inner, ast.Import):
                    deferred.extend(alias.name for alias in inner.names)
    return list(dict.fromkeys(deferred))


def cold_path(handler: str) -> list[str]:
    """The modules a cold invocation of ``handler`` imports, in order: its init, then its first use."""
    return ["app", *first_use_imports(handler)]


def targets() -> dict[str, tuple[str, list[str]]]:
    """name -> (modules to import, comma-separated; extra sys.path entries in front of the runtime)."""
    found: dict[str, tuple[str, list[str]]] = {"boto3": ("boto3", [str(RUNTIME)])}
    for name in HANDLERS:
        paths = [str(REPO_ROOT / "functions" / name), str(REPO_ROOT / "layers" / "domain"), str(RUNTIME)]
        found[name] = (",".join(cold_path(name)), paths)
    return found


def import_seconds(module: str, paths: list[str]) -> float:
    env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", **HANDLER_ENV}
    done = subprocess.run([PYTHON, "-S", "-c", _CHILD, module, *paths], env=env, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"importing {module} from {paths[0]} failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip())


def imported_modules(modules: str, paths: list[str]) -> set[str]:
    """Top-level packages a cold invocation imports (to show what each handler pulls in)."""
    code = (
        "import sys; sys.path[:0]=sys.argv[2:]; before=set(sys.modules)\n"
        "for m in sys.argv[1].split(','): __import__(m)\n"
        "print(' '.join({m.split('.')[0] for m in set(sys.modules)-before}))"
    )
    env = {"PATH": os.environ.get("PATH", ""), **HANDLER_ENV}
    done = subprocess.run([PYTHON, "-S", "-c", code, modules, *paths], env=env, capture_output=True, text=True, timeout=60, check=True)
    return {name for name in done.stdout.split() if not name.startswith("_") and re.match(r"^[a-z]", name)}


def main(rounds: int = ROUNDS) -> dict[str, Any]:
    ensure_runtime()
    named = targets()
    for module, paths in named.values():
        import_seconds(module, paths)  # compile bytecode; not counted
    samples: dict[str, list[float]] = {name: [] for name in named}
    order = list(named)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            module, paths = named[name]
            samples[name].append(import_seconds(module, paths))
    floor = median(samples["boto3"])
    third_party = {"aws_lambda_powertools", "botocore", "httpx", "pydantic", "pydantic_settings", "anyio"}
    summary: dict[str, Any] = {"rounds": rounds, "clock": "process CPU time", "target_ratio": TARGET, "targets": {}}
    summary.update(python=PYTHON_VERSION, lambda_runtime=lambda_runtime())
    for name, values in samples.items():
        entry: dict[str, Any] = {"median_ms": median(values) * 1000, "ratio": median(values) / floor, "runs_ms": [v * 1000 for v in values]}
        if name in HANDLERS:
            entry["met"] = entry["ratio"] <= TARGET
            entry["first_use"] = first_use_imports(name)
            entry["libraries"] = sorted(imported_modules(*named[name]) & third_party)
        summary["targets"][name] = entry
    summary["all_met"] = all(entry.get("met", True) for entry in summary["targets"].values())
    save("coldstart", summary)
    return summary


def report(summary: dict[str, Any]) -> str:
    rows = []
    for name, entry in summary["targets"].items():
        label = "import boto3 (floor)" if name == "boto3" else f"functions/{name}/app.py + {', '.join(entry['first_use'])}"
        result = verdict(entry["met"]) if "met" in entry else ""
        rows.append([label, f"{entry['median_ms']:.0f} ms", f"{entry['ratio']:.2f}x", result, " ".join(entry.get("libraries", []))])
    python = f"Python {summary['python']}"
    if f"python{summary['python']}" != summary["lambda_runtime"]:
        python += f", not the runtime's {summary['lambda_runtime']}"
    headers = [f"cold path: init + first invocation's imports (CPU, median of {summary['rounds']}, fresh {python})", "time", "vs floor", f"<= {TARGET}x"]
    return table([*headers, "libraries besides boto3"], rows)


if __name__ == "__main__":
    print(report(main()))
