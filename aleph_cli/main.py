"""The ``aleph`` command: submit, status, list, watch, get.

    aleph submit clip.mp4 --prompt "make it snow" --wait
    aleph status <jobId>
    aleph submit clip.mp4 --prompts "make it snow" "make it rain"
    aleph list --state FAILED
    aleph list --sidecar team/clip.json
    aleph watch <jobId>
    aleph get <jobId> --to out/
    aleph doctor
    aleph dashboard

The stack is a deployed one named by ``--stack`` (or ``ALEPH_STACK``; found through its
CloudFormation outputs, with your usual AWS credentials), else the local stack whose
``stack.json`` is in ``--local`` (or ``ALEPH_LOCAL_DIR``, default ``./.local``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aleph_cli import cost, dashboard, doctor, jobs
from aleph_cli.errors import CliError
from aleph_cli.stack import LOCAL_DIR, STACK_JSON, StackInfo, discover

STATE_CHOICES = ("RECEIVED", "SUBMITTED", "SUCCEEDED", "COMPLETED", "FAILED")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        stack = discover(args.stack, args.local, args.region, args.profile)
        result: int = args.command(stack, args)
        return result
    except CliError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # botocore's errors, said in one line
        return _fail(_aws_message(exc))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aleph", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2])
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--stack", help="a deployed stack's name (default: $ALEPH_STACK; without it, the local stack)")
    parser.add_argument("--local", metavar="DIR", help="the local stack's folder with stack.json (default: $ALEPH_LOCAL_DIR or .local)")
    parser.add_argument("--region", help="AWS region of --stack")
    parser.add_argument("--profile", help="AWS profile for --stack")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    submit = commands.add_parser("submit", help="upload a video and its sidecar (last), print the job id")
    submit.add_argument("video", type=Path)
    prompt = submit.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="the edit to make")
    prompt.add_argument("--prompts", nargs="+", metavar="P", help="variants: one job per prompt, for the same video")
    submit.add_argument("--provider", help="kie, apikley, ... (default: the stack's DefaultProvider)")
    submit.add_argument("--model", help="the provider's model id")
    submit.add_argument("--aspect-ratio", dest="aspectRatio", help="16:9, 9:16, 4:3, 3:4, 1:1 or 21:9")
    submit.add_argument("--seed", type=int)
    submit.add_argument("--reference-image", dest="referenceImages", action="append", metavar="KEY_OR_URL")
    submit.add_argument("--watermark")
    submit.add_argument("--set", dest="fields", action="append", default=[], metavar="FIELD=JSON", help="any sidecar field, e.g. --set numberResults=2")
    submit.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE", help="copied into job.json")
    submit.add_argument("--name", help="the pair's name in the bucket (default: the video's file name without extension)")
    submit.add_argument("--folder", default="", help="a folder below the input prefix")
    submit.add_argument("--wait", action="store_true", help="follow the job with a progress display until it finishes")
    submit.add_argument("--timeout", type=float, default=900.0, help="seconds --wait waits (default 900)")
    submit.set_defaults(command=cmd_submit)

    status = commands.add_parser("status", help="a job's state, timings, outputs, or why it failed")
    status.add_argument("job_id", metavar="JOB")
    status.add_argument("--json", action="store_true", help="the job record as JSON")
    status.set_defaults(command=cmd_status)

    listing = commands.add_parser("list", help="jobs, newest first; or one sidecar's jobs (its variants in prompt order)")
    listing.add_argument("--state", type=str.upper, choices=STATE_CHOICES)
    listing.add_argument("--sidecar", metavar="KEY", help="a sidecar's key in the input bucket (with or without the input prefix)")
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(command=cmd_list)

    watch = commands.add_parser("watch", help="follow a job with a progress display until it finishes")
    watch.add_argument("job_id", metavar="JOB")
    watch.add_argument("--timeout", type=float, default=900.0)
    watch.set_defaults(command=cmd_watch)

    get = commands.add_parser("get", help="download a job's outputs")
    get.add_argument("job_id", metavar="JOB")
    get.add_argument("--to", type=Path, help="folder (default: ./<jobId>)")
    get.set_defaults(command=cmd_get)

    checkup = commands.add_parser("doctor", help="check the stack: provider keys, callback API, schedule, DLQs, stuck jobs (exit 1 if any needs fixing)")
    checkup.set_defaults(command=cmd_doctor)

    commands.add_parser("dashboard", help="print the URL of the stack's CloudWatch dashboard").set_defaults(command=cmd_dashboard)
    cost.add_parser(commands)
    return parser


# ---------------------------------------------------------------------------- commands


def cmd_submit(stack: StackInfo, args: argparse.Namespace) -> int:
    sidecar = build_sidecar(args)
    submitted = jobs.upload_pair(stack, args.video, sidecar, name=args.name, folder=args.folder)
    print(f"uploaded s3://{stack.input_bucket}/{submitted.video_key} and {submitted.sidecar_key}")
    for job_id in submitted.job_ids or (submitted.job_id,):
        print(f"job {job_id}")
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    # Variants run side by side: following them in turn costs no more than the slowest.
    results = [follow(stack, job_id, max(0.0, deadline - time.monotonic())) for job_id in submitted.job_ids or (submitted.job_id,)]
    return max(results)


def cmd_watch(stack: StackInfo, args: argparse.Namespace) -> int:
    jobs.require_job(stack, args.job_id)
    return follow(stack, args.job_id, args.timeout)


def cmd_status(stack: StackInfo, args: argparse.Namespace) -> int:
    job = jobs.require_job(stack, args.job_id)
    if args.json:
        print(json.dumps(job, indent=2, sort_keys=True, default=str))
        return 0
    rows = [
        ("job", job["jobId"]),
        ("state", job["status"]),
        ("provider", f"{job.get('provider') or '-'} / {job.get('model') or '-'}"),
        ("sidecar", f"s3://{job.get('inputBucket', stack.input_bucket)}/{job.get('sidecarKey', '')}"),
        ("video", job.get("videoKey") or job.get("videoUrl") or "-"),
        ("created", job.get("createdAt", "-")),
        ("updated", job.get("updatedAt", "-")),
    ]
    waiting = jobs.waiting_for(job)
    if waiting:
        rows.append(("waiting", waiting))
    elapsed = jobs.elapsed_seconds(job)
    if elapsed is not None:
        rows.append(("elapsed", f"{elapsed:.1f} s"))
    if job.get("variantIndex") is not None:
        rows.append(("variant", f"{job['variantIndex']} of {job.get('variantCount', '?')}: {sidecar_prompt(job) or '-'}"))
    if job.get("costEstimate") is not None:
        rows.append(("estimate", f"{usd(job['costEstimate'])} (before sending)"))
    if job.get("cost") is not None:
        rows.append(("cost", usd(job["cost"])))
    for tried in job.get("providersTried") or []:
        code = f" ({tried['code']})" if tried.get("code") else ""
        rows.append(("tried", f"{tried.get('provider')} / {tried.get('model') or '-'}: {tried.get('reason') or '-'}{code} @{str(tried.get('at', ''))[11:23]}"))
    rows.append(("history", "  ".join(f"{h.get('state')}@{str(h.get('at', ''))[11:23]}" for h in job.get("history", []))))
    if job["status"] == "FAILED":
        error = jobs.error_of(stack, job)
        rows.append(("error", jobs.describe_error(error)))
        if error.get("hint"):
            rows.append(("hint", str(error["hint"])))
    for key in jobs.output_keys(stack, job):
        rows.append(("output", f"s3://{stack.output_bucket}/{key}"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def cmd_list(stack: StackInfo, args: argparse.Namespace) -> int:
    if args.sidecar:
        return list_sidecar(stack, args.sidecar)
    found = jobs.list_jobs(stack, args.state, args.limit)
    if not found:
        print(f"no {args.state + ' ' if args.state else ''}jobs")
        return 0
    for job in found:
        print(f"{job['jobId']}  {job['status']:<9}  {job.get('updatedAt', ''):<24}  {job.get('provider') or '-':<8}  {job.get('sidecarKey', '')}")
    return 0


def list_sidecar(stack: StackInfo, key: str) -> int:
    """One line per job of the sidecar: id, state, variant, prompt, cost (``~`` an estimate), job.json."""
    key = key.lstrip("/")
    if not key.startswith(stack.input_prefix):
        key = f"{stack.input_prefix}{key}"
    found = jobs.sidecar_jobs(stack, key)
    if not found:
        print(f"no jobs from s3://{stack.input_bucket}/{key}")
        return 0
    prompts = [sidecar_prompt(job) or "-" for job in found]
    costs = [job_cost(job) for job in found]
    prompt_width, cost_width = max(len(p) for p in prompts), max(len(c) for c in costs)
    for job, prompt, charged in zip(found, prompts, costs, strict=True):
        variant = "-" if job.get("variantIndex") is None else str(job["variantIndex"])
        manifest = f"s3://{stack.output_bucket}/{job.get('outputPrefix', '')}job.json"
        print(f"{job['jobId']}  {job['status']:<9}  {variant:>2}  {prompt:<{prompt_width}}  {charged:>{cost_width}}  {manifest}")
    if any(charged.startswith("~") for charged in costs):
        print("~ an estimate made before sending (the provider reported no cost)")
    return 0


def cmd_get(stack: StackInfo, args: argparse.Namespace) -> int:
    job = jobs.require_job(stack, args.job_id)
    folder: Path = args.to or Path(job["jobId"])
    for path in jobs.download(stack, job, folder):
        print(f"{path}  ({path.stat().st_size} bytes)")
    if job["status"] == "FAILED":
        return _fail(f"job {job['jobId']} FAILED: {jobs.describe_error(jobs.error_of(stack, job))}")
    return 0


def cmd_doctor(stack: StackInfo, args: argparse.Namespace) -> int:
    if stack.endpoint_url is None:
        target = doctor.deployed_target(stack)
    else:
        target = doctor.local_target(Path(args.local or os.environ.get("ALEPH_LOCAL_DIR") or LOCAL_DIR) / STACK_JSON)
    checks = doctor.run(stack, target)
    for check in checks:
        print(check.line)
    return 1 if any(check.verdict == "fix" for check in checks) else 0


def cmd_dashboard(stack: StackInfo, args: argparse.Namespace) -> int:
    print(dashboard.dashboard_url(stack))
    return 0


# ---------------------------------------------------------------------------- helpers


def usd(amount: Any) -> str:
    return f"{float(amount):.2f} USD"


def job_cost(job: Mapping[str, Any]) -> str:
    """The cost the provider reported, else the estimate (marked ``~``), else ``-``."""
    if job.get("cost") is not None:
        return usd(job["cost"])
    if job.get("costEstimate") is not None:
        return f"~{usd(job['costEstimate'])}"
    return "-"


def sidecar_prompt(job: Mapping[str, Any]) -> str | None:
    """The job's own prompt (a variant's one of ``prompts``), from the sidecar recorded at intake."""
    raw = job.get("sidecarJson")
    try:
        document = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    prompt = document.get("prompt") if isinstance(document, dict) else None
    return prompt if isinstance(prompt, str) else None


def build_sidecar(args: argparse.Namespace) -> dict[str, Any]:
    sidecar: dict[str, Any] = {"prompts": args.prompts} if args.prompts else {"prompt": args.prompt} if args.prompt is not None else {}
    for field in ("provider", "model", "aspectRatio", "seed", "referenceImages", "watermark"):
        value = getattr(args, field)
        if value is not None:
            sidecar[field] = value
    for item in args.fields:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise CliError(f"--set {item!r}: expected FIELD=JSON, e.g. --set numberResults=2")
        try:
            sidecar[name] = json.loads(raw)
        except json.JSONDecodeError:
            sidecar[name] = raw  # a bare word is a string
    if args.metadata:
        metadata: dict[str, str] = {}
        for item in args.metadata:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise CliError(f"--metadata {item!r}: expected KEY=VALUE")
            metadata[key] = value
        sidecar["metadata"] = metadata
    return sidecar


def follow(stack: StackInfo, job_id: str, timeout: float) -> int:
    """Show the job's progress until it finishes; print where its output is, or why it failed."""
    with progress_display(job_id) as on_change:
        job = jobs.watch(stack, job_id, timeout=timeout, on_change=on_change)
    if job["status"] == "FAILED":
        return _fail(f"job {job_id} FAILED: {jobs.describe_error(jobs.error_of(stack, job))}")
    print(f"output: {jobs.result_location(stack, job)}")
    return 0


@contextmanager
def progress_display(job_id: str) -> Iterator[Any]:
    """A rich progress bar over the job's states with the elapsed time; each new state also gets a line."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(highlight=False)
    steps = len(jobs.STATES)
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description:<10}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("WAITING", total=steps)

        def on_change(state: str, elapsed: float, job: Mapping[str, Any] | None) -> None:
            done = jobs.STATES.index(state) + 1 if state in jobs.STATES else (steps if state == "FAILED" else 0)
            progress.update(task, description=state, completed=done)
            waiting = jobs.waiting_for(job)
            label = "waiting for the pipeline to read the sidecar" if state == "WAITING" else f"{state}: {waiting}" if waiting else state
            progress.console.print(f"  {elapsed:6.1f}s  {label}")

        yield on_change


def _fail(message: str) -> int:
    print(f"aleph: {message}", file=sys.stderr)
    return 1


def _aws_message(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        operation = getattr(exc, "operation_name", "AWS")
        return f"{operation}: {error.get('Code')}: {error.get('Message') or 'no message'}"
    name = type(exc).__name__
    if name == "EndpointConnectionError":
        return f"{exc} (is the stack running?)"
    if name in ("NoCredentialsError", "PartialCredentialsError", "ProfileNotFound", "NoRegionError"):
        return f"{exc} (set up AWS credentials and a region, e.g. --profile/--region)"
    return f"{name}: {exc}"


if __name__ == "__main__":
    sys.exit(main())
