"""The template as CloudFormation runs it: the SAM transform done by samtranslator itself.

samtranslator pins its own pydantic, so it lives in ``.venv-sam``. ``expand_template`` (called
from the main environment) runs this file with ``.venv-sam/bin/python``; run directly, the file
does the transform::

    .venv-sam/bin/python tools/sam_expand.py template.yaml -o .local/template.transformed.json

Local ``CodeUri``/``ContentUri`` folders are given as ``s3://local-code/<folder>`` (what
``sam validate`` does too: the transform only accepts S3 locations); the folder stays readable
as the code's ``S3Key``. Policy templates, event sources, routes and roles come out as plain
CloudFormation resources.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SAM_PYTHON = REPO_ROOT / ".venv-sam" / "bin" / "python"
LOCAL_CODE_BUCKET = "local-code"
DEFAULT_REGION = "us-east-1"
EXPAND_TIMEOUT_SECONDS = 60


class ExpansionError(RuntimeError):
    """The SAM transform could not run or refused the template."""


def expand_template(template: Path, *, region: str = DEFAULT_REGION, sam_python: Path = SAM_PYTHON) -> dict[str, Any]:
    """``template`` after the SAM transform, as a dict (raises ExpansionError with the reason)."""
    if not sam_python.is_file():
        raise ExpansionError(f"{sam_python} not found: the SAM translator environment is not installed (make {sam_python.parents[1].name}/.installed)")
    try:
        done = subprocess.run(  # noqa: S603 - our own interpreter and script, the template path as one argument
            [str(sam_python), str(Path(__file__).resolve()), str(template), "--region", region],
            capture_output=True,
            text=True,
            timeout=EXPAND_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ExpansionError(f"the SAM transform of {template} took longer than {EXPAND_TIMEOUT_SECONDS} s") from exc
    if done.returncode != 0:
        raise ExpansionError(f"the SAM transform of {template} failed: {done.stderr.strip()[-2000:]}")
    expanded: dict[str, Any] = json.loads(done.stdout)
    return expanded


def code_folder(code: Any) -> str | None:
    """The repository folder of a transformed function's ``Code`` (or a layer's ``Content``)."""
    if isinstance(code, dict) and code.get("S3Bucket") == LOCAL_CODE_BUCKET and isinstance(code.get("S3Key"), str):
        return str(code["S3Key"])
    return None


def _transform(template_text: str, region: str) -> dict[str, Any]:
    """Runs inside ``.venv-sam``."""
    from samtranslator.translator.transform import transform  # type: ignore[import-not-found,unused-ignore]
    from samtranslator.yaml_helper import yaml_parse  # type: ignore[import-not-found,unused-ignore]

    class NoManagedPolicies:
        """Managed policies named by name would need IAM; the template names none (only ARNs)."""

        def load(self) -> dict[str, str]:
            return {}

    template = yaml_parse(template_text)
    for resource in (template.get("Resources") or {}).values():
        properties = resource.get("Properties") or {} if isinstance(resource, dict) else {}
        for key in ("CodeUri", "ContentUri"):
            if isinstance(properties.get(key), str) and not properties[key].startswith("s3://"):
                properties[key] = f"s3://{LOCAL_CODE_BUCKET}/{properties[key]}"
    # samtranslator asks boto3 for the region (for AWS::Region and the partition).
    os.environ["AWS_DEFAULT_REGION"] = region
    transformed: dict[str, Any] = transform(template, {}, NoManagedPolicies())
    return transformed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("template", type=Path)
    parser.add_argument("-o", "--output", type=Path, help="write the CloudFormation JSON here (default: stdout)")
    parser.add_argument("--region", default=DEFAULT_REGION)
    args = parser.parse_args(argv)
    try:
        transformed = _transform(args.template.read_text(encoding="utf-8"), args.region)
    except Exception as exc:  # the translator's own errors name the resources and reasons
        print(f"{args.template}: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(transformed, indent=1, sort_keys=False)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
