"""`make demo`: start the local stack, run one edit on a sample clip, save the outputs and a preview."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import boto3

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
    args = parser.parse_args(argv)

    out: Path = args.out
    clip: Path = args.clip or make_clip(args.workdir / "sample.mp4")
    print(f"input clip: {clip} ({clip.stat().st_size} bytes, {duration_seconds(clip):.1f} s)")
    print("starting the local stack (moto server, provider simulator, handlers) ...", flush=True)
    process, info = spawn(args.workdir)
    try:
        return run_job(info, clip, args.prompt, out, args.timeout)
    finally:
        process.terminate()
        process.wait(timeout=30)
        print("local stack stopped")


def run_job(info: dict[str, Any], clip: Path, prompt: str, out: Path, timeout: float) -> int:
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=info["region"])
    s3 = session.client("s3", endpoint_url=info["s3_endpoint"])
    table = session.resource("dynamodb", endpoint_url=info["s3_endpoint"]).Table(info["jobs_table"])
    stem = f"{info['input_prefix']}demo/{clip.stem}"
    video_key = f"{stem}{clip.suffix.lower()}"
    sidecar_key = f"{stem}.json"
    s3.upload_file(str(clip), info["input_bucket"], video_key)
    s3.put_object(Bucket=info["input_bucket"], Key=sidecar_key, Body=json.dumps({"prompt": prompt, "provider": "kie"}).encode())
    print(f"uploaded s3://{info['input_bucket']}/{video_key} and {sidecar_key}")

    started = time.monotonic()
    last_state = None
    job: dict[str, Any] | None = None
    while time.monotonic() - started < timeout:
        items = table.scan(FilterExpression="sidecarKey = :key", ExpressionAttributeValues={":key": sidecar_key}, ConsistentRead=True)["Items"]
        job = items[0] if items else None
        state = job["status"] if job else "waiting for the submit function"
        if state != last_state:
            print(f"  {time.monotonic() - started:6.1f}s  {state}", flush=True)
            last_state = state
        if job and job["status"] in ("COMPLETED", "FAILED"):
            break
        time.sleep(0.25)
    if job is None or job["status"] not in ("COMPLETED", "FAILED"):
        print(f"the job did not finish within {timeout:.0f} s", file=sys.stderr)
        return 1

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    listed = s3.list_objects_v2(Bucket=info["output_bucket"], Prefix=job["outputPrefix"]).get("Contents", [])
    for entry in listed:
        target = out / Path(entry["Key"]).name
        s3.download_file(info["output_bucket"], entry["Key"], str(target))
    print(f"output files (s3://{info['output_bucket']}/{job['outputPrefix']}) saved under {out}/:")
    for path in sorted(out.iterdir()):
        print(f"  {path.name:12s} {path.stat().st_size:>10d} bytes")

    if job["status"] == "FAILED":
        print(f"the job FAILED: {json.dumps(job.get('error'), default=str)}", file=sys.stderr)
        return 1
    result = out / "result.mp4"
    picture = side_by_side(clip, result, out / "preview.png")
    print(f"result: {result} ({duration_seconds(result):.1f} s; the provider edits the first 5 s)")
    print(f"preview (input | output): {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
