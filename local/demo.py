"""`make demo`: start the local stack, run one edit on a sample clip, save the outputs and a preview."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from aleph_cli import jobs
from aleph_cli.errors import CliError
from aleph_cli.main import progress_display
from aleph_cli.stack import from_local_info
from aleph_pipeline.sidecar import PROVIDER_IDS
from local.media import duration_seconds, make_clip, side_by_side
from local.stack import spawn

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Turn the scene into a snowy winter evening with warm street lights"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clip", type=Path, help="a video to edit (default: a generated 8-second test clip)")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--out", type=Path, default=ROOT / "out", help="where to save the outputs (default: out/)")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".local")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the job")
    parser.add_argument(
        "--provider",
        default=os.environ.get("PROVIDER") or "kie",
        choices=PROVIDER_IDS,
        help="the provider the simulator plays (default: $PROVIDER or kie; `make demo PROVIDER=runway`)",
    )
    args = parser.parse_args(argv)

    out: Path = args.out
    clip: Path = args.clip or make_clip(args.workdir / "sample.mp4")
    print(f"input clip: {clip} ({clip.stat().st_size} bytes, {duration_seconds(clip):.1f} s)")
    print("starting the local stack (moto server, provider simulator, handlers) ...", flush=True)
    process, info = spawn(args.workdir)
    try:
        return run_job(info, clip, args.prompt, out, args.timeout, provider=args.provider)
    finally:
        process.terminate()
        process.wait(timeout=30)
        print("local stack stopped")


def run_job(info: dict[str, Any], clip: Path, prompt: str, out: Path, timeout: float, *, provider: str = "kie") -> int:
    """Upload, follow and fetch the job with the ``aleph`` CLI's own functions."""
    stack = from_local_info(info)
    submitted = jobs.upload_pair(stack, clip, {"prompt": prompt, "provider": provider}, folder="demo")
    print(f"provider: {provider} (the stack's simulator)")
    print(f"uploaded s3://{stack.input_bucket}/{submitted.video_key} and {submitted.sidecar_key}")
    print(f"job {submitted.job_id}")
    try:
        with progress_display(submitted.job_id) as on_change:
            job = jobs.watch(stack, submitted.job_id, timeout=timeout, on_change=on_change)
    except CliError as exc:
        print(exc, file=sys.stderr)
        return 1

    if out.exists():
        shutil.rmtree(out)
    saved = jobs.download(stack, job, out)
    print(f"output files ({jobs.result_location(stack, job)}) saved under {out}/:")
    for path in sorted(saved):
        print(f"  {path.name:12s} {path.stat().st_size:>10d} bytes")

    if job["status"] == "FAILED":
        print(f"the job FAILED: {jobs.describe_error(jobs.error_of(stack, job))}", file=sys.stderr)
        return 1
    result = out / "result.mp4"
    picture = side_by_side(clip, result, out / "preview.png")
    print(f"result: {result} ({duration_seconds(result):.1f} s)")
    print(f"preview (input | output): {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
