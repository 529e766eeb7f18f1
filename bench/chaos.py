"""Chaos run: many small jobs through the local stack with every simulator fault switched on at random.

    python -m bench.chaos [--jobs 500] [--seed 7] [--workdir DIR] [--aws-faults NAME=RATE,...|all]

Starts the local stack (moto server, the provider simulator, the real handlers, the reconciler
every second with short grace periods and deadline), turns on every fault the simulator knows at
a seeded rate for every provider (among them the ones that create the task and then fail the
answer: a 502/504 gateway page or a 500, a connection reset, an answer after the client's read
timeout), optionally AWS-side faults in the stack (``--aws-faults``), uploads tiny clips with
sidecars spread over kie, apikley, Runware (Aleph 2.0 and Aleph 1, some with two results) and
crun, delivers some S3 notifications twice, waits for every job to settle, and checks what must
hold:

- every job ends COMPLETED (results + job.json) or FAILED with a specific reason (error.json
  only: no partial results beside it);
- nothing is lost: every uploaded sidecar has exactly one job, in a terminal state;
- no job has two output sets: one jobId folder per sidecar, holding exactly one of
  {results + job.json} or {error.json};
- nothing paid twice: at most one task per job among the tasks the simulator *created*
  (``/_sim/tasks``, matched by the job id in each task's callback URL), whatever the answers
  said; no task for a job the provider refused; a job with an ambiguous submit
  (``submit_ambiguous``) may have one task or none;
- no COMPLETED job whose provider task did not succeed, no job failed as refused whose task the
  provider created, and no failure reason this run makes impossible.

It prints the counts as tables and exits 1 when a check fails. ``run()`` is what the ``chaos``
pytest calls with a smaller N.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlsplit

import httpx

if __package__ in (None, ""):  # run as ``python bench/chaos.py``: the repository root holds ``local``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from local.client import aws_client
from local.media import make_clip
from local.stack import spawn, terminate

# Every fault the simulator offers, with the chance that it hits a request (submit faults) or a
# task (the others). Several task faults can hit the same task.
FAULT_RATES: dict[str, float] = {
    "submit_429": 0.10,
    "submit_500": 0.08,
    # These three create the task and then fail the answer: a retry pays twice.
    "submit_5xx_after_create": 0.07,
    "reset_after_read": 0.05,
    "read_timeout": 0.07,
    "early_callback": 0.07,
    "stale_callback": 0.10,
    "delay_callback": 0.12,
    "duplicate_callback": 0.12,
    "drop_callback": 0.12,
    "generation_failure": 0.06,
    "expired_result": 0.05,
    "foreign_result_host": 0.06,
    "wrong_container": 0.03,
    "bad_signature": 0.06,  # Replicate: the webhook is refused (401); the reconciler's poll finishes the job
    "cancelled": 0.04,  # Runway: the task ends CANCELLED, a terminal failure  # the result is not in the container asked for: FAILED result_format_mismatch
}
# provider, model, extra sidecar fields; picked round-robin so every provider gets its share.
JOB_KINDS: tuple[tuple[str, str | None, dict[str, Any]], ...] = (
    ("kie", None, {}),
    ("apikley", None, {"aspectRatio": "16:9"}),
    ("runware", "runway:aleph@2.0", {}),
    ("crun", None, {}),
    ("kie", None, {"seed": 3}),
    ("runware", "runway:2@1", {"numberResults": 2}),
    ("crun", None, {"aspectRatio": "1:1"}),
    ("apikley", None, {}),
    ("runway", None, {}),
    ("replicate", None, {"aspectRatio": "16:9"}),
)
# AWS-side faults the local stack can inject (``--aws-faults``), with the rates ``--aws-faults all`` uses.
AWS_FAULT_RATES: dict[str, float] = {
    "s3_500": 0.01,
    "s3_slowdown": 0.01,
    "dynamodb_throttle": 0.01,
    "dynamodb_500": 0.01,
    "secrets_error": 0.02,
    "kill": 0.01,  # a handler cut off at a random point of its work (after an AWS or provider call)
}
# Once an error fault hits, this many more attempts to the same service fail too: enough to outlast
# botocore's retries (DynamoDB retries up to 10 times), so some errors reach the handlers' code.
AWS_FAULT_BURST = 10
TERMINAL = ("COMPLETED", "FAILED")
# How long all jobs may take to settle when ChaosConfig.timeout_seconds is not given: a job's
# deadline plus the time 2 shared cores need for the uploads, ffmpeg edits and handler runs.
SETTLE_BASE_SECONDS = 240.0
SETTLE_SECONDS_PER_JOB = 1.2
CALLBACK_FIELDS = ("callBackUrl", "webhookURL", "callback_url", "webhook")
PROMPT_FIELDS = ("prompt", "positivePrompt", "promptText")  # a task without a callback URL (Runway) is found by its prompt
PROMPT_INDEX = re.compile(r"chaos (\d+): ")
FRESH_LINK_PROVIDERS = frozenset({"kie", "apikley", "runway"})
# The failure codes that say the provider did not take the request, or that it was never sent (a job
# that waited for a provider slot until its deadline: slot_timeout): such a job must have no task.
REFUSAL_CODES = frozenset({"provider_rejected", "provider_unavailable", "provider_not_configured", "slot_timeout"})
# The submit may or may not have created a task (a 5xx, a gateway page, a reset, a timeout).
AMBIGUOUS_CODE = "submit_ambiguous"
# Codes that name no reason at all.
CATCH_ALL_CODES = frozenset({"", "None", "error", "failed", "failure", "unknown", "unknown_error", "internal", "internal_error", "exception"})
# Reasons that cannot be true in this run: every provider has a key, every video is uploaded with
# its sidecar and no sidecar is replaced (a notification sent again is the same upload).
IMPOSSIBLE_CODES = frozenset({"provider_not_configured", "pairing_timeout", "video_not_found", "sidecar_replaced"})
AWS_FAULTS_FILE = "aws-faults.json"  # written by the stack when it stops: {"rules": [{"fault", "rate", "applied"}]}


@dataclass
class ChaosConfig:
    jobs: int = 500
    seed: int = 7
    rates: Mapping[str, float] = field(default_factory=lambda: dict(FAULT_RATES))
    aws_faults: Mapping[str, float] = field(default_factory=dict)  # stack-side faults by name (AWS_FAULT_RATES); none by default
    duplicate_event_rate: float = 0.15  # share of sidecars (and videos) whose S3 notification is sent again
    # The pipeline's clocks, short so the reconciler settles dropped callbacks and deadlines quickly.
    callback_grace_seconds: int = 2
    job_deadline_seconds: int = 45
    finalize_grace_seconds: int = 10
    claim_settle_seconds: int = 6
    read_timeout_seconds: float = 3.0  # the pipeline's provider read timeout
    submit_hold_seconds: float = 5.0  # the simulator's read_timeout hold: past the read timeout
    callback_delay_seconds: float = 3.0
    timeout_seconds: float | None = None  # for all jobs to settle; None: SETTLE_BASE_SECONDS + SETTLE_SECONDS_PER_JOB a job
    clip_seconds: float = 2.5  # Runware Aleph 2.0 takes 2-30 s
    clip_size: str = "160x90"
    sqs_concurrency: int = 6
    # Queue visibility timeouts scaled like the pipeline's clocks: a failed submit message comes
    # back after 720 s x 0.01 = 7 s (the template's timeout, not a shortcut the real poller lacks).
    sqs_time_scale: float = 0.01

    @property
    def settle_seconds(self) -> float:
        if self.timeout_seconds is not None:
            return self.timeout_seconds
        return SETTLE_BASE_SECONDS + SETTLE_SECONDS_PER_JOB * self.jobs


@dataclass
class ChaosReport:
    config: ChaosConfig
    seconds: float
    jobs_by_provider: dict[str, collections.Counter[str]]
    failure_codes: collections.Counter[str]
    faults_applied: dict[str, int]
    tasks_per_job: collections.Counter[int]
    outcomes_by_fault: dict[str, collections.Counter[str]]  # task fault -> "COMPLETED" / failure code -> jobs
    duplicate_events: int
    callback_before_submit: int  # jobs whose callback outran the submit answer (RECEIVED -> SUCCEEDED)
    submit_faults: tuple[str, ...]  # the simulator faults that refuse a request without creating a task
    checks: dict[str, int]
    problems: list[str]
    # One line per job: sidecar, provider, state, failure code, history, and the faults its task met.
    details: list[dict[str, Any]] = field(default_factory=list)
    aws_faults_applied: dict[str, int] = field(default_factory=dict)  # stack-side fault -> times applied

    @property
    def ok(self) -> bool:
        return not self.problems

    def table(self) -> str:
        lines = [f"chaos run: {self.config.jobs} jobs, seed {self.config.seed}, {self.seconds:.0f} s", ""]
        by_fault = self.outcomes_by_fault
        lines += _table(
            ["provider", "jobs", "COMPLETED", "FAILED", "not terminal"],
            [
                [provider, sum(states.values()), states["COMPLETED"], states["FAILED"], sum(n for s, n in states.items() if s not in TERMINAL)]
                for provider, states in sorted(self.jobs_by_provider.items())
            ],
        )
        tasks = [[count, jobs] for count, jobs in sorted(self.tasks_per_job.items())]
        sections: list[tuple[list[str], list[list[Any]]]] = [
            (["failure reason", "jobs"], [[code, count] for code, count in self.failure_codes.most_common()]),
            (
                ["fault (simulator)", "task created", "applied", "jobs hit", "COMPLETED", "FAILED (reason: jobs)"],
                [
                    [
                        name,
                        "no" if name in self.submit_faults else "yes",
                        count,
                        "refused requests" if name in self.submit_faults else sum(by_fault.get(name, {}).values()),
                        by_fault.get(name, collections.Counter())["COMPLETED"],
                        ", ".join(f"{code} {n}" for code, n in sorted(by_fault.get(name, {}).items()) if code != "COMPLETED") or "-",
                    ]
                    for name, count in self.faults_applied.items()
                ],
            ),
            *([(["fault (AWS)", "applied"], [[name, count] for name, count in self.aws_faults_applied.items()])] if self.aws_faults_applied else []),
            (
                ["provider tasks per job", "jobs"],
                [*tasks, ["S3 events sent twice", self.duplicate_events], ["callbacks before the submit answer", self.callback_before_submit]],
            ),
            (["check (must be 0)", "count"], [[name, count] for name, count in self.checks.items()]),
        ]
        for header, rows in sections:
            lines += ["", *_table(header, rows)]
        if self.problems:
            lines += ["", "problems:", *(f"  {problem}" for problem in self.problems[:40])]
        return "\n".join(lines)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """Plain text columns: numbers right-aligned, words left-aligned."""
    cells = [header, *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [all(isinstance(row[i], int) for row in rows) for i in range(len(header))]
    fmt = "  ".join(f"{{:{'>' if numeric[i] else '<'}{width}}}" for i, width in enumerate(widths))
    return [fmt.format(*row).rstrip() for row in [cells[0], ["-" * w for w in widths], *cells[1:]]]


def stack_arguments(config: ChaosConfig) -> list[str]:
    settings = {
        "CALLBACK_GRACE_SECONDS": config.callback_grace_seconds,
        "JOB_DEADLINE_SECONDS": config.job_deadline_seconds,
        "FINALIZE_GRACE_SECONDS": config.finalize_grace_seconds,
        "CLAIM_SETTLE_SECONDS": config.claim_settle_seconds,
        "PAIRING_TIMEOUT_SECONDS": max(60, config.job_deadline_seconds),
        "PROVIDER_READ_TIMEOUT_SECONDS": config.read_timeout_seconds,
        # Provider keys read again every few seconds (300 s in production), so Secrets Manager faults are met.
        "SECRET_MAX_AGE_SECONDS": 2,
        # Paced, but faster than kie's real 20 per 10 s: hundreds of jobs at once would otherwise
        # wait past this run's short deadlines for their slots (bench/scale.py measures the pace).
        "PROVIDER_RATE_LIMITS": json.dumps({"kie": "20/1", "apikley": "20/1"}),
        # Runway's tasks in flight as the simulator's Runway runs them at once (its concurrency, 2).
        "PROVIDER_CONCURRENCY": json.dumps({"runway": 2}),
    }
    args = ["--schedule-interval", "1", "--sqs-concurrency", str(config.sqs_concurrency), "--sqs-time-scale", str(config.sqs_time_scale), "--quiet"]
    for name, value in settings.items():
        args += ["--env", f"{name}={value}"]
    if config.aws_faults:
        rules = [{"fault": name, "rate": rate, **({"burst": AWS_FAULT_BURST} if name != "kill" else {})} for name, rate in config.aws_faults.items()]
        args += ["--aws-faults", json.dumps({"seed": config.seed, "rules": rules})]
    return args


def parse_aws_faults(text: str) -> dict[str, float]:
    """``NAME=RATE,...`` (or ``all``: every AWS fault at its AWS_FAULT_RATES rate) -> rates by name."""
    if text.strip() == "all":
        return dict(AWS_FAULT_RATES)
    rates: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = item.partition("=")
        if name not in AWS_FAULT_RATES:
            raise argparse.ArgumentTypeError(f"unknown AWS fault {name!r}: use {', '.join(AWS_FAULT_RATES)} (or all)")
        try:
            rate = float(value) if equals else -1.0
        except ValueError:
            rate = -1.0
        if not 0 <= rate <= 1:
            raise argparse.ArgumentTypeError(f"AWS fault {name}: give a rate from 0 to 1 as {name}=RATE, not {item!r}")
        rates[name] = rate
    return rates


def read_aws_faults_applied(workdir: Path) -> dict[str, int]:
    """How often each AWS-side fault was applied, from the file the stack writes when it stops
    (in its workdir, or the ``.local`` folder under it); empty when there is none."""
    for path in (workdir / AWS_FAULTS_FILE, workdir / ".local" / AWS_FAULTS_FILE):
        if path.is_file():
            document = json.loads(path.read_text(encoding="utf-8"))
            return {str(rule["fault"]): int(rule.get("applied", 0)) for rule in document.get("rules", [])}
    return {}


def run(config: ChaosConfig, workdir: Path, log: Callable[[str], None] = print) -> ChaosReport:
    """Start a stack in ``workdir``, run the chaos, stop the stack; return what was found (each
    job's details also go to ``workdir/chaos-report.json``)."""
    process, info = spawn(workdir, *stack_arguments(config), timeout=90)
    try:
        report = _run(config, workdir, info, log)
    finally:
        terminate(process)
    report.aws_faults_applied = read_aws_faults_applied(workdir)
    (workdir / "chaos-report.json").write_text(json.dumps(report.details, indent=1) + "\n", encoding="utf-8")
    return report


def _run(config: ChaosConfig, workdir: Path, info: dict[str, Any], log: Callable[[str], None]) -> ChaosReport:
    started = time.monotonic()
    rng = random.Random(config.seed)
    s3, sqs, dynamodb = (aws_client(name, info) for name in ("s3", "sqs", "dynamodb"))
    bucket, prefix = str(info["input_bucket"]), str(info["input_prefix"])
    folder = f"chaos-{config.seed}-{int(time.time())}"
    clip = make_clip(workdir / "clip.mp4", seconds=config.clip_seconds, size=config.clip_size).read_bytes()

    with httpx.Client(base_url=str(info["simulator_url"]), timeout=30, trust_env=False) as sim:
        sim.post("/_sim/config", json={"submit_hold_seconds": config.submit_hold_seconds, "delay_seconds": config.callback_delay_seconds}).raise_for_status()
        rules = [{"fault": name, "rate": rate} for name, rate in config.rates.items() if rate > 0]
        sim.post("/_sim/faults", json={"seed": config.seed, "rules": rules}).raise_for_status()

        uploads, sidecars = _plan(config, rng, f"{prefix}{folder}", clip)
        resend = [key for key, _ in uploads if rng.random() < config.duplicate_event_rate]
        early, late = resend[: len(resend) // 2], resend[len(resend) // 2 :]

        def put(item: tuple[str, bytes]) -> None:
            s3.put_object(Bucket=bucket, Key=item[0], Body=item[1])

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(put, uploads))
        log(f"uploaded {config.jobs} sidecars and videos under s3://{bucket}/{prefix}{folder}/")
        _resend_events(s3, sqs, queue_url=str(info["submit_queue_url"]), bucket=bucket, keys=early, region=str(info["region"]))

        deadline = time.monotonic() + config.settle_seconds
        jobs: dict[str, list[dict[str, Any]]] = {}
        late_sent = False
        next_report = time.monotonic()
        while time.monotonic() < deadline:
            jobs = _jobs_by_sidecar(dynamodb, str(info["jobs_table"]), f"{prefix}{folder}/")
            done = sum(1 for key in sidecars if any(job["status"] in TERMINAL for job in jobs.get(key, [])))
            if not late_sent and done >= config.jobs // 2:
                _resend_events(s3, sqs, queue_url=str(info["submit_queue_url"]), bucket=bucket, keys=late, region=str(info["region"]))
                late_sent = True
            if done == config.jobs and late_sent:
                break
            if time.monotonic() >= next_report:
                log(f"  {time.monotonic() - started:5.0f} s: {done}/{config.jobs} jobs settled")
                next_report = time.monotonic() + 10
            time.sleep(1)
        # error.json follows the FAILED state, and late callbacks or re-sent events may still be in
        # flight: give them a moment before the outputs are judged.
        _settle(lambda: _outputs(s3, str(info["output_bucket"]), f"{folder}/"), quiet_seconds=4, limit=30)
        jobs = _jobs_by_sidecar(dynamodb, str(info["jobs_table"]), f"{prefix}{folder}/")
        outputs = _outputs(s3, str(info["output_bucket"]), f"{folder}/")
        tasks = sim.get("/_sim/tasks").json()
        fault_book = sim.get("/_sim/faults").json()
        faults = {rule["fault"]: int(rule["applied"]) for rule in fault_book["rules"]}
        sim.delete("/_sim/faults")
    return _judge(
        config,
        seconds=time.monotonic() - started,
        sidecars=sidecars,
        jobs=jobs,
        outputs=outputs,
        tasks=tasks,
        faults=faults,
        submit_faults=tuple(fault_book["known"]["submit"]),
        duplicate_events=len(resend),
        input_prefix=prefix,
    )


def _plan(config: ChaosConfig, rng: random.Random, base: str, clip: bytes) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """The objects to upload (key, body) in upload order, and each sidecar's provider."""
    sidecars: dict[str, str] = {}
    uploads: list[tuple[str, bytes]] = []
    for index in range(config.jobs):
        provider, model, extra = JOB_KINDS[index % len(JOB_KINDS)]
        stem = f"{base}/job-{index:04d}"
        document: dict[str, Any] = {"prompt": f"chaos {index}: turn the scene into a winter evening", "provider": provider, **extra}
        if model:
            document["model"] = model
        pair = [(f"{stem}.mp4", clip), (f"{stem}.json", json.dumps(document).encode())]
        uploads.extend(pair if rng.random() < 0.7 else pair[::-1])  # either file may come first
        sidecars[f"{stem}.json"] = provider
    return uploads, sidecars


def _resend_events(s3: Any, sqs: Any, *, queue_url: str, bucket: str, keys: Iterable[str], region: str) -> None:
    """Deliver the S3 ObjectCreated notification of each key once more (S3 delivers at least once)."""
    for key in keys:
        head = s3.head_object(Bucket=bucket, Key=key)
        record = {
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": region,
            "eventTime": head["LastModified"].strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "eventName": "ObjectCreated:Put",
            "s3": {
                "s3SchemaVersion": "1.0",
                "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                "object": {"key": quote_plus(key), "size": head["ContentLength"], "eTag": head["ETag"].strip('"')},
            },
        }
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"Records": [record]}))


def _jobs_by_sidecar(dynamodb: Any, table: str, key_prefix: str) -> dict[str, list[dict[str, Any]]]:
    """Every job item of this run (a scan: fine for a test harness, never done by the pipeline)."""
    found: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    paginator = dynamodb.get_paginator("scan")
    pages = paginator.paginate(
        TableName=table,
        ConsistentRead=True,
        FilterExpression="begins_with(sidecarKey, :prefix)",
        ExpressionAttributeValues={":prefix": {"S": key_prefix}},
    )
    for page in pages:
        for item in page["Items"]:
            job = {
                "jobId": item["jobId"]["S"],
                "status": item["status"]["S"],
                "sidecarKey": item["sidecarKey"]["S"],
                "provider": item.get("provider", {}).get("S"),
                "errorCode": item.get("error", {}).get("M", {}).get("code", {}).get("S"),
                "errorStage": item.get("error", {}).get("M", {}).get("stage", {}).get("S"),
                "history": [entry["M"]["state"]["S"] for entry in item.get("history", {}).get("L", [])],
            }
            found[job["sidecarKey"]].append(job)
    return found


def _outputs(s3: Any, bucket: str, prefix: str) -> dict[str, list[str]]:
    """Output keys of this run grouped by folder (``<folder>/job-NNNN/<jobId>``) -> file names."""
    grouped: dict[str, list[str]] = collections.defaultdict(list)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            folder, _, name = entry["Key"].rpartition("/")
            grouped[folder].append(name)
    return {folder: sorted(names) for folder, names in grouped.items()}


def _settle(read: Callable[[], Any], *, quiet_seconds: float, limit: float) -> None:
    """Wait until ``read()`` gives the same answer for ``quiet_seconds`` (at most ``limit``)."""
    end = time.monotonic() + limit
    last, since = read(), time.monotonic()
    while time.monotonic() < end and time.monotonic() - since < quiet_seconds:
        time.sleep(1)
        current = read()
        if current != last:
            last, since = current, time.monotonic()


def _task_job_id(task: Mapping[str, Any], job_ids_by_index: Mapping[int, str]) -> str | None:
    """The job a task was made for: the job id in its callback URL, or, for a provider that never
    calls back (Runway), the job of the sidecar whose prompt it carries."""
    request = task.get("request")
    if not isinstance(request, Mapping):
        return None
    for name in CALLBACK_FIELDS:
        url = request.get(name)
        if isinstance(url, str):
            parts = urlsplit(url).path.rstrip("/").split("/")
            return parts[-1] if len(parts) >= 2 and parts[-3] == "callbacks" else None
    for name in PROMPT_FIELDS:
        found = PROMPT_INDEX.match(str(request.get(name) or ""))
        if found:
            return job_ids_by_index.get(int(found.group(1)))
    return None


def reason_problems(job: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A FAILED job's reason must be specific and possible here: (check, detail) for each lapse."""
    code, stage = job.get("errorCode"), job.get("errorStage")
    if job["status"] != "FAILED":
        return []
    if not code or code in CATCH_ALL_CODES:
        return [("FAILED without a specific reason", f"code {code!r} at stage {stage!r}")]
    if code in IMPOSSIBLE_CODES:
        return [("FAILED with a reason impossible in this run", f"{code} at stage {stage!r}")]
    return []


def task_problems(job: Mapping[str, Any], submitted: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """What the tasks the simulator created for a job say about it: nothing paid twice, nothing
    claimed accepted without a task, nothing claimed refused with one. (check, detail) each."""
    code, stage = job.get("errorCode"), job.get("errorStage")
    answers = [(task.get("submit_answer"), task.get("faults", [])) for task in submitted]
    failed_at_submit = job["status"] == "FAILED" and stage == "submit"
    problems: list[tuple[str, str]] = []
    if len(submitted) > 1:
        problems.append(("jobs submitted more than once", f"{len(submitted)} tasks (submit answers and faults: {answers})"))
    elif not submitted and not (failed_at_submit and (code in REFUSAL_CODES or code == AMBIGUOUS_CODE)):
        # Only a refused request leaves no task; an ambiguous submit may have left one or none.
        problems.append(("jobs accepted by the provider without a task", f"{job['status']} {code} at stage {stage!r}"))
    elif submitted and code in REFUSAL_CODES:
        # The provider took the request (and will charge for it) while the job says it did not.
        problems.append(("FAILED as refused although the provider created a task", f"{code}; task {answers}"))
    # An expired result link is fatal except where the provider hands out a fresh one (kie and
    # apikley through download-url; Runway on every fetch of the task).
    spoiled = [task for task in submitted if task["state"] != "success" or (task["expired"] and task["provider"] not in FRESH_LINK_PROVIDERS)]
    if job["status"] == "COMPLETED" and spoiled:
        problems.append(("COMPLETED although the provider task did not succeed", str([(task["state"], task["expired"]) for task in submitted])))
    return problems


def _judge(
    config: ChaosConfig,
    *,
    seconds: float,
    sidecars: Mapping[str, str],
    jobs: Mapping[str, list[dict[str, Any]]],
    outputs: Mapping[str, list[str]],
    tasks: list[dict[str, Any]],
    faults: dict[str, int],
    submit_faults: tuple[str, ...],
    duplicate_events: int,
    input_prefix: str,
) -> ChaosReport:
    problems: list[str] = []
    details: list[dict[str, Any]] = []
    checks = dict.fromkeys(
        (
            "not terminal (lost or stuck)",
            "sidecars with more than one job",
            "FAILED without error.json or with results",
            "FAILED without a specific reason",
            "FAILED with a reason impossible in this run",
            "COMPLETED without results + job.json, or with error.json",
            "jobs with two output sets",
            "jobs submitted more than once",
            "jobs accepted by the provider without a task",
            "FAILED as refused although the provider created a task",
            "COMPLETED although the provider task did not succeed",
            "provider tasks of no job",
        ),
        0,
    )

    def fail(check: str, detail: str) -> None:
        checks[check] += 1
        problems.append(f"{check}: {detail}")

    tasks_by_job: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    job_ids_by_index = {int(key.rsplit("job-", 1)[1][:4]): found[0]["jobId"] for key, found in jobs.items() if found and "job-" in key}
    for task in tasks:
        job_id = _task_job_id(task, job_ids_by_index)
        if job_id is None:
            fail("provider tasks of no job", str(task.get("taskId")))
        else:
            tasks_by_job[job_id].append(task)
    run_folders = set(outputs)

    by_provider: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    failure_codes: collections.Counter[str] = collections.Counter()
    tasks_per_job: collections.Counter[int] = collections.Counter()
    outcomes_by_fault: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for key, provider in sidecars.items():
        found = jobs.get(key, [])
        if len(found) > 1:
            fail("sidecars with more than one job", f"{key}: {[job['jobId'] for job in found]}")
        if not found or found[0]["status"] not in TERMINAL:
            stuck = found[0] if found else {}
            fail("not terminal (lost or stuck)", f"{key}: {stuck.get('status', 'no job')} {stuck.get('jobId', '')} history {stuck.get('history', [])}")
            by_provider[provider][found[0]["status"] if found else "NO JOB"] += 1
            continue
        job = found[0]
        by_provider[provider][job["status"]] += 1
        stem = key[len(input_prefix) : -len(".json")]
        folders = sorted(folder for folder in run_folders if folder.startswith(stem + "/"))
        job_folder = f"{stem}/{job['jobId']}"
        if folders != [job_folder]:
            fail("jobs with two output sets", f"{key}: output folders {folders}")
        names = set(outputs.get(job_folder, []))
        results = {name for name in names if name.startswith("result")}
        if job["status"] == "FAILED":
            failure_codes[str(job["errorCode"])] += 1
            if names != {"error.json"}:
                fail("FAILED without error.json or with results", f"{key}: {sorted(names)}")
        elif not results or "job.json" not in names or "error.json" in names:
            fail("COMPLETED without results + job.json, or with error.json", f"{key}: {sorted(names)}")
        submitted = tasks_by_job.get(job["jobId"], [])
        tasks_per_job[len(submitted)] += 1
        outcome = "COMPLETED" if job["status"] == "COMPLETED" else str(job["errorCode"])
        details.append(
            {
                "sidecar": key,
                "provider": provider,
                "state": job["status"],
                "error": job.get("errorCode"),
                "history": job["history"],
                "tasks": [
                    {"id": task["taskId"], "state": task["state"], "faults": task.get("faults", []), "submit_answer": task.get("submit_answer")}
                    for task in submitted
                ],
            }
        )
        for name in {fault for task in submitted for fault in task.get("faults", [])}:
            outcomes_by_fault[name][outcome] += 1
        for check, detail in [*reason_problems(job), *task_problems(job, submitted)]:
            fail(check, f"{key}: {detail}")
    return ChaosReport(
        config=config,
        seconds=seconds,
        jobs_by_provider=dict(by_provider),
        failure_codes=failure_codes,
        faults_applied=faults,
        tasks_per_job=tasks_per_job,
        outcomes_by_fault=dict(outcomes_by_fault),
        duplicate_events=duplicate_events,
        callback_before_submit=sum(
            1 for found in jobs.values() for job in found if any(pair == ("RECEIVED", "SUCCEEDED") for pair in itertools.pairwise(job["history"]))
        ),
        submit_faults=submit_faults,
        checks=checks,
        problems=problems,
        details=details,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=ChaosConfig.jobs)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None, help="where the stack's logs go (default: a temporary folder)")
    parser.add_argument(
        "--aws-faults",
        type=parse_aws_faults,
        default=dict(AWS_FAULT_RATES),
        metavar="NAME=RATE,...",
        help=f"AWS-side faults the local stack injects at a seeded rate: {', '.join(AWS_FAULT_RATES)}; 'all' for each at its default rate",
    )
    args = parser.parse_args(argv)
    config = ChaosConfig(jobs=args.jobs, seed=args.seed, aws_faults=args.aws_faults)
    with tempfile.TemporaryDirectory(prefix="aleph-chaos-") as scratch:
        workdir = args.workdir or Path(scratch)
        report = run(config, workdir)
    print(report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
