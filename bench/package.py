"""Package size: ``sam build``, then the layer and each function as deployed (unzipped and zipped).

Lambda's limit is 250 MB unzipped for a function and its layers together. boto3 (and botocore,
s3transfer) must not be packaged: the runtime has them, and a packaged copy would only add
size and cold-start time.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from bench.common import MIB, save, table, verdict
from local.client import REPO_ROOT

LAMBDA_UNZIPPED_LIMIT = 250 * 1000 * 1000
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer")


def _sam() -> str:
    for candidate in (os.environ.get("SAM"), str(REPO_ROOT / ".venv-sam" / "bin" / "sam")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise SystemExit("SAM CLI not found: run `make bench` (it installs .venv-sam) or set SAM=/path/to/sam")


def build(build_dir: Path) -> None:
    env = dict(os.environ)
    env.setdefault("PYENV_VERSION", "3.11.7:3.12.1:3.13.0")
    env["SAM_CLI_TELEMETRY"] = "0"
    done = subprocess.run(
        [_sam(), "build", "--template", str(REPO_ROOT / "template.yaml"), "--build-dir", str(build_dir)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"sam build failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def measure(directory: Path) -> dict[str, Any]:
    files = [path for path in directory.rglob("*") if path.is_file()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(path, path.relative_to(directory))
    top = {part for path in files for part in path.relative_to(directory).parts[:2]}
    return {
        "unzipped_bytes": sum(path.stat().st_size for path in files),
        "zipped_bytes": buffer.tell(),
        "files": len(files),
        "runtime_packages_found": sorted(name for name in RUNTIME_PACKAGES if name in top),
    }


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="aleph-build-") as tmp:
        build_dir = Path(tmp) / "build"
        build(build_dir)
        artifacts = {path.name: measure(path) for path in sorted(build_dir.iterdir()) if path.is_dir()}
    layer = artifacts.get("SharedLayer", {"unzipped_bytes": 0})
    largest = max(entry["unzipped_bytes"] for name, entry in artifacts.items() if name != "SharedLayer")
    summary = {
        "artifacts": artifacts,
        "boto3_not_packaged": not any(entry["runtime_packages_found"] for entry in artifacts.values()),
        "largest_function_with_layer_bytes": largest + layer["unzipped_bytes"],
        "lambda_unzipped_limit_bytes": LAMBDA_UNZIPPED_LIMIT,
    }
    save("package", summary)
    return summary


def _size(count: int) -> str:
    return f"{count / MIB:.1f} MiB" if count >= MIB else f"{count / 1024:.1f} KiB"


def report(summary: dict[str, Any]) -> str:
    rows = [
        [name, _size(entry["unzipped_bytes"]), _size(entry["zipped_bytes"]), entry["files"], ", ".join(entry["runtime_packages_found"]) or "none"]
        for name, entry in summary["artifacts"].items()
    ]
    return "\n".join(
        [
            table(["sam build artifact", "unzipped", "zipped", "files", "boto3/botocore/s3transfer inside"], rows),
            "",
            f"largest function + layer unzipped: {summary['largest_function_with_layer_bytes'] / MIB:.1f} MiB of Lambda's 250 MB;"
            f" boto3 not packaged: {verdict(summary['boto3_not_packaged'])}",
        ]
    )


if __name__ == "__main__":
    print(report(main()))
    sys.exit(0)
