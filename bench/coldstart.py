"""Cold start: the time to import each handler module in a fresh interpreter, against ``import boto3``.

The Lambda Python runtime has boto3, so ``import boto3`` is the floor a handler cannot go under
once it talks to AWS. A handler's own import (its init phase) should cost at most 1.5x that.

To be faithful to Lambda, the children do not see this repository's development environment
(moto, click, pytest... would change what some libraries import): they run ``python -S`` with
``sys.path`` = the function's directory, ``layers/domain`` (the layer's code) and
``bench/.runtime``, a directory holding exactly the layer's requirements plus boto3 (installed
once with ``pip install --target``, like ``sam build`` does). Each module is imported once first
so its bytecode is compiled (not counted), then 10 rounds run every target in a shuffled order
(a noisy moment on a shared machine hits all of them alike); the median counts.

The handlers import the domain package on first use, so their init is Powertools only. A
deferred import is not free: the first invocation pays it. That is why each handler has a second
row, its init plus everything its first invocation imports (the domain entry point and boto3):
the whole import cost of a cold invocation, printed for information (the target is on the init).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import median, save, table, verdict
from local.client import REPO_ROOT

RUNTIME = REPO_ROOT / "bench" / ".runtime"
HANDLERS = ("submit", "callback", "finalize")
# What each handler imports on its first invocation (the domain entry point, and boto3 through it).
FIRST_USE = {"submit": "aleph_pipeline.intake", "callback": "aleph_pipeline.callbacks", "finalize": "aleph_pipeline.finalize"}
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
started = time.perf_counter()
for module in sys.argv[1].split(","):
    __import__(module)
print(time.perf_counter() - started)
"""


def _requirements() -> list[str]:
    boto3 = next(line.split("#")[0].strip() for line in (REPO_ROOT / "requirements-dev.txt").read_text().splitlines() if line.startswith("boto3=="))
    return [boto3, "-r", str(REPO_ROOT / "layers" / "domain" / "requirements.txt")]


def ensure_runtime() -> Path:
    """``bench/.runtime``: boto3 and the layer's requirements, nothing else (re-made when they change)."""
    stamp = hashlib.sha256(json.dumps([_requirements(), (REPO_ROOT / "layers/domain/requirements.txt").read_text()]).encode()).hexdigest()
    marker = RUNTIME / ".stamp"
    if marker.is_file() and marker.read_text() == stamp:
        return RUNTIME
    if RUNTIME.exists():
        subprocess.run(["rm", "-rf", str(RUNTIME)], check=True)
    print("installing boto3 and the layer's requirements into bench/.runtime ...", file=sys.stderr, flush=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", str(RUNTIME), *_requirements()],
        check=True,
    )
    marker.write_text(stamp)
    return RUNTIME


def targets() -> dict[str, tuple[str, list[str]]]:
    """name -> (module to import, extra sys.path entries in front of the runtime)."""
    found: dict[str, tuple[str, list[str]]] = {"boto3": ("boto3", [str(RUNTIME)])}
    for name in HANDLERS:
        paths = [str(REPO_ROOT / "functions" / name), str(REPO_ROOT / "layers" / "domain"), str(RUNTIME)]
        found[name] = ("app", paths)
        found[f"{name}+first"] = (f"app,{FIRST_USE[name]},boto3", paths)
    return found


def import_seconds(module: str, paths: list[str]) -> float:
    env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", **HANDLER_ENV}
    done = subprocess.run([sys.executable, "-S", "-c", _CHILD, module, *paths], env=env, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"importing {module} from {paths[0]} failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip())


def imported_modules(paths: list[str]) -> set[str]:
    """Top-level packages a handler imports at init (to show what it defers)."""
    code = "import sys; sys.path[:0]=sys.argv[1:]; before=set(sys.modules); import app; print(' '.join({m.split('.')[0] for m in set(sys.modules)-before}))"
    env = {"PATH": os.environ.get("PATH", ""), **HANDLER_ENV}
    done = subprocess.run([sys.executable, "-S", "-c", code, *paths], env=env, capture_output=True, text=True, timeout=60, check=True)
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
    third_party = {"aws_lambda_powertools", "boto3", "botocore", "httpx", "pydantic", "pydantic_core", "pydantic_settings", "anyio", "s3transfer"}
    summary: dict[str, Any] = {"rounds": rounds, "target_ratio": TARGET, "python": sys.version.split()[0], "targets": {}}
    for name, values in samples.items():
        entry: dict[str, Any] = {"median_ms": median(values) * 1000, "ratio": median(values) / floor, "runs_ms": [v * 1000 for v in values]}
        if name in HANDLERS:
            entry["met"] = entry["ratio"] <= TARGET
            entry["libraries_at_init"] = sorted(imported_modules(named[name][1]) & third_party)
        summary["targets"][name] = entry
    summary["all_met"] = all(entry.get("met", True) for entry in summary["targets"].values())
    save("coldstart", summary)
    return summary


def report(summary: dict[str, Any]) -> str:
    rows = []
    for name, entry in summary["targets"].items():
        if name == "boto3":
            label = "import boto3 (floor)"
        elif name in HANDLERS:
            label = f"functions/{name}/app.py (init)"
        else:
            label = f"  + first invocation's imports ({FIRST_USE[name.split('+')[0]]}, boto3)"
        result = verdict(entry["met"]) if "met" in entry else ""
        rows.append([label, f"{entry['median_ms']:.0f} ms", f"{entry['ratio']:.2f}x", result, " ".join(entry.get("libraries_at_init", []))])
    return table([f"import (median of {summary['rounds']}, fresh interpreter)", "time", "vs floor", f"<= {TARGET}x", "libraries imported at init"], rows)


if __name__ == "__main__":
    print(report(main()))
