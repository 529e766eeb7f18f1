"""The bad-input corpus: sidecars the pipeline must refuse, each with the error code and the words
its ``error.json`` must carry, through the whole local stack, and not one provider call for any.

The corpus runs on a stack of its own (a 3-second pairing deadline, the reconciler every second),
uploaded all at once and then waited for. ``pytest -s`` prints the figures.

A UTF-8 byte-order mark alone is *not* bad input: the parser accepts it on purpose (a Windows
editor's BOM is harmless). So the BOM appears in the corpus only paired with another fault
(a BOM and nothing else, a BOM before malformed JSON or an unknown field, two BOMs), and a valid
sidecar with a BOM is in the ``ACCEPTED`` list, which runs after the corpus and must reach the
provider (it also shows that the simulator's request log does record calls).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from local.media import make_clip

from .conftest import Stack, open_stack, wait_until

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
BOM = b"\xef\xbb\xbf"
PAIRING_SECONDS = 3
ALLOWED_PROVIDERS = "'kie', 'apikley', 'runware', 'crun', 'replicate' or 'runway'"


@dataclass(frozen=True)
class Case:
    """One sidecar (``<name>.json`` in the corpus folder) and what its ``error.json`` must say."""

    name: str
    sidecar: dict[str, Any] | bytes
    code: str
    says: tuple[str, ...]  # fragments the message must contain
    # Files uploaded next to the sidecar before it: name in the folder -> a key of ``media``.
    files: dict[str, str] = field(default_factory=dict)

    @property
    def body(self) -> bytes:
        return self.sidecar if isinstance(self.sidecar, bytes) else json.dumps(self.sidecar, ensure_ascii=False).encode("utf-8")


def case(name: str, sidecar: dict[str, Any] | bytes, code: str, *says: str, files: dict[str, str] | None = None) -> Case:
    return Case(name, sidecar, code, says, files or {})


# Videos every case may name with `"video"` (uploaded once into the corpus folder): real clips
# where the duration is read, junk where only the name or the size is checked.
SHARED_FILES = {
    "shared.mp4": "clip",  # the stack's 7-second clip
    "long.mp4": "long",  # 31.5 s, tiny: over Runware Aleph 2.0's 30 s
    "short.mp4": "short",  # 1 s: under its 2 s
    "big.mp4": "big",  # 11 MiB of zeros: over kie's 10 MB (the size comes from S3, nothing is read)
    "junk.mp4": "junk",  # not a video: no duration in its header
    "shared.webm": "junk",
    "shared.avi": "junk",
}
P = "snow at dusk"
EVIL = "https://evil.test/"
SIDECAR_2MB = json.dumps({"prompt": P, "metadata": {"pad": "a" * (2 * MIB)}}).encode()
SIDECAR_JUST_OVER = json.dumps({"prompt": P, "metadata": {"pad": "a" * (256 * 1024 - 40)}}).encode()

CASES: list[Case] = [
    # ---- not JSON, or not a JSON object ------------------------------------------------------
    case("json-trailing-comma", b'{"prompt": "snow",}', "invalid_json", "not valid JSON", "line 1"),
    case("json-truncated", b'{"prompt": "snow"', "invalid_json", "not valid JSON"),
    case("json-single-quotes", b"{'prompt': 'snow'}", "invalid_json", "not valid JSON"),
    case("json-comment", b'// the edit\n{"prompt": "snow"}', "invalid_json", "not valid JSON"),
    case("empty", b"", "invalid_json", "empty"),
    case("whitespace-only", b" \n\t \r\n", "invalid_json", "empty"),
    case("bom-only", BOM, "invalid_json", "empty"),
    case("bom-then-malformed", BOM + b'{"prompt": "snow"', "invalid_json", "not valid JSON"),
    case("bom-twice", BOM + BOM + b'{"prompt": "snow"}', "invalid_json", "BOM"),
    case("bom-unknown-field", BOM + b'{"prompt": "snow", "colour": "red"}', "invalid_sidecar", "unknown field `colour`"),
    case("utf16", '{"prompt": "snow"}'.encode("utf-16"), "invalid_json", "not UTF-8"),
    case("latin1", b'{"prompt": "caf\xe9 in the snow"}', "invalid_json", "not UTF-8"),
    case("nul-bytes", b"\x00" * 16, "invalid_json", "not valid JSON"),
    case("nested-too-deep", b"[" * 50_000, "invalid_json", "nested too deeply"),
    case("size-2mb", SIDECAR_2MB, "sidecar_too_large", f"is {len(SIDECAR_2MB)} bytes", "at most 262144 bytes"),
    case("size-just-over", SIDECAR_JUST_OVER, "sidecar_too_large", f"is {len(SIDECAR_JUST_OVER)} bytes", "at most 262144 bytes"),
    case("top-level-array", b'[{"prompt": "snow"}]', "invalid_sidecar", "must be a JSON object, not an array"),
    case("top-level-string", b'"snow"', "invalid_sidecar", "not a string"),
    case("top-level-null", b"null", "invalid_sidecar", "not null"),
    # ---- wrong fields, types and values ------------------------------------------------------
    case("no-prompt", {"seed": 1}, "invalid_sidecar", "missing required field `prompt`"),
    case("prompt-empty", {"prompt": ""}, "invalid_sidecar", "field `prompt`"),
    case("prompt-blank", {"prompt": "  \n\t "}, "invalid_sidecar", "field `prompt`"),
    case("prompt-number", {"prompt": 42}, "invalid_sidecar", "field `prompt`", "valid string"),
    case("prompt-list", {"prompt": ["snow"]}, "invalid_sidecar", "field `prompt`"),
    case("prompt-5000-kie", {"prompt": "a" * 5000, "provider": "kie"}, "invalid_sidecar", "5000 characters", "at most 2048"),
    case("prompt-5000-runware", {"prompt": "a" * 5000, "provider": "runware"}, "invalid_sidecar", "5000 characters", "1-1000"),
    case("prompt-1001-crun", {"prompt": "a" * 1001, "provider": "crun"}, "invalid_sidecar", "1001 characters", "at most 1000"),
    case("prompt-unicode-2049-apikley", {"prompt": "❄" * 2049, "provider": "apikley"}, "invalid_sidecar", "2049 characters"),
    case("seed-word", {"prompt": P, "seed": "forty-two"}, "invalid_sidecar", "field `seed`"),
    case("seed-bool", {"prompt": P, "seed": True}, "invalid_sidecar", "field `seed`", "whole number"),
    case("seed-negative", {"prompt": P, "seed": -1}, "invalid_sidecar", "field `seed`"),
    case("seed-fraction", {"prompt": P, "seed": 1.5}, "invalid_sidecar", "field `seed`", "whole number"),
    case("seed-nan", b'{"prompt": "snow", "seed": NaN}', "invalid_sidecar", "field `seed`"),
    case("aspect-ratio-unknown", {"prompt": P, "aspectRatio": "2:1"}, "invalid_sidecar", "field `aspectRatio`"),
    case("unknown-field", {"prompt": P, "promt": "rain"}, "invalid_sidecar", "unknown field `promt`", "allowed fields: prompt"),
    case("unknown-field-emoji", {"prompt": P, "🎬": 1}, "invalid_sidecar", "unknown field `🎬`"),
    case("unknown-nested-field", {"prompt": P, "provider": "runware", "safety": {"mode": "fast", "level": 3}}, "invalid_sidecar", "`safety.level`"),
    case("metadata-not-object", {"prompt": P, "metadata": "shot A"}, "invalid_sidecar", "field `metadata`"),
    case("reference-images-empty", {"prompt": P, "referenceImages": []}, "invalid_sidecar", "field `referenceImages`"),
    case("number-results-9", {"prompt": P, "provider": "runware", "numberResults": 9}, "invalid_sidecar", "field `numberResults`"),
    # ---- provider and model ------------------------------------------------------------------
    case("provider-unknown", {"prompt": P, "provider": "openai"}, "invalid_sidecar", "field `provider`", ALLOWED_PROVIDERS),
    case("provider-wrong-case", {"prompt": P, "provider": "Kie"}, "invalid_sidecar", "field `provider`", ALLOWED_PROVIDERS),
    case("provider-number", {"prompt": P, "provider": 5}, "invalid_sidecar", "field `provider`"),
    case("provider-nope", {"prompt": P, "provider": "nope"}, "invalid_sidecar", "field `provider`", '(got "nope")', ALLOWED_PROVIDERS),
    # ~3,000 unknown fields in 23 KB once made a 495 KB message: no FAILED record, no error.json.
    case(
        "3000-unknown-fields",
        {"prompt": P, **{f"f{index:04d}": 1 for index in range(3000)}},
        "invalid_sidecar",
        "unknown field `f0000`",
        "and 2990 more problems",
        "allowed fields: prompt, provider",
    ),
    case(
        "credentials-in-a-frame-image",
        {"prompt": P, "frameImages": [{"image": "https://user:hunter2@images.test/a.png", "frame": "first", "timestamp": 1}]},
        "invalid_sidecar",
        "not both",
        "https://images.test/a.png",
    ),
    case("model-unknown-kie", {"prompt": P, "model": "gen-4"}, "unknown_model", "`gen-4`", "provider `kie`", "aleph"),
    case("model-unknown-runware", {"prompt": P, "provider": "runware", "model": "runway:3@1"}, "unknown_model", "`runway:3@1`", "runway:aleph@2.0"),
    case("model-of-another-provider", {"prompt": P, "provider": "crun", "model": "runway:2@1"}, "unknown_model", "provider `crun`", "runway/gen-4-aleph"),
    # ---- options the provider or model cannot take -------------------------------------------
    case("kie-number-results", {"prompt": P, "numberResults": 2}, "unsupported_option", "`numberResults`", "provider `kie`"),
    case("kie-two-reference-images", {"prompt": P, "referenceImages": ["a.png", "b.png"]}, "unsupported_option", "one reference image"),
    case("kie-options-replace-callback", {"prompt": P, "providerOptions": {"callBackUrl": EVIL}}, "invalid_sidecar", "`callBackUrl`"),
    case("apikley-width-height", {"prompt": P, "provider": "apikley", "width": 1280, "height": 720}, "unsupported_option", "`height`, `width`"),
    case("apikley-frame-images", {"prompt": P, "provider": "apikley", "frameImages": ["f.png"]}, "unsupported_option", "`frameImages`"),
    case("runware2-reference-images", {"prompt": P, "provider": "runware", "referenceImages": ["a.png"]}, "unsupported_option", "`referenceImages`"),
    case("runware2-watermark", {"prompt": P, "provider": "runware", "watermark": "ACME"}, "unsupported_option", "`watermark`", "runway:aleph@2.0"),
    case("runware1-frame-images", {"prompt": P, "provider": "runware", "model": "runway:2@1", "frameImages": ["f.png"]}, "unsupported_option", "`frameImages`"),
    case("runware1-odd-size", {"prompt": P, "provider": "runware", "model": "runway:2@1", "width": 1000, "height": 1000}, "unsupported_option", "1000x1000"),
    case(
        "runware1-size-and-aspect",
        {"prompt": P, "provider": "runware", "model": "runway:2@1", "width": 1280, "height": 720, "aspectRatio": "16:9"},
        "invalid_sidecar",
        "not both",
    ),
    case("runware-ttl-too-short", {"prompt": P, "provider": "runware", "providerOptions": {"ttl": 5}}, "invalid_sidecar", "`ttl`"),
    case("runware-options-replace-webhook", {"prompt": P, "provider": "runware", "providerOptions": {"webhookURL": EVIL}}, "invalid_sidecar", "`webhookURL`"),
    case("crun-output-format", {"prompt": P, "provider": "crun", "outputFormat": "mp4"}, "unsupported_option", "`outputFormat`", "provider `crun`"),
    case("crun-options-replace-callback", {"prompt": P, "provider": "crun", "providerOptions": {"callback_url": EVIL}}, "invalid_sidecar", "`callback_url`"),
    # ---- the video ---------------------------------------------------------------------------
    case("video-never-arrives", {"prompt": P}, "pairing_timeout", f"did not arrive within {PAIRING_SECONDS} s"),
    case("named-video-never-arrives", {"prompt": P, "video": "nowhere.mp4"}, "pairing_timeout", "nowhere.mp4`"),
    case("kie-video-too-large", {"prompt": P, "video": "big.mp4"}, "video_too_large", f"{11 * MIB} bytes", "at most 10485760"),
    case("apikley-video-too-large", {"prompt": P, "provider": "apikley", "video": "big.mp4"}, "video_too_large", "provider `apikley`"),
    case("runware-video-too-long", {"prompt": P, "provider": "runware", "video": "long.mp4"}, "video_duration", "31.", "2 to 30 seconds"),
    case("runware-video-too-short", {"prompt": P, "provider": "runware", "video": "short.mp4"}, "video_duration", "s long", "2 to 30 seconds"),
    case("runware-video-without-duration", {"prompt": P, "provider": "runware", "video": "junk.mp4"}, "video_unsupported", "duration could not be read"),
    case(
        "runware-frame-past-the-end",
        {"prompt": P, "provider": "runware", "video": "shared.mp4", "frameImages": [{"image": "https://example.com/f.png", "timestamp": 20}]},
        "invalid_sidecar",
        "past the end",
    ),
    case("video-gif", {"prompt": P, "video": "clip.gif"}, "video_unsupported", "clip.gif` is not a video", ".mp4"),
    case("video-is-a-sidecar", {"prompt": P, "video": "other.json"}, "video_unsupported", "is not a video"),
    case("kie-video-webm", {"prompt": P, "video": "shared.webm"}, "video_unsupported", "provider `kie`", "not .webm"),
    case("crun-video-avi", {"prompt": P, "provider": "crun", "video": "shared.avi"}, "video_unsupported", "provider `crun`", "not .avi"),
    case("kie-webm-paired-by-name", {"prompt": P}, "video_unsupported", "not .webm", files={"kie-webm-paired-by-name.webm": "junk"}),
    case("video-dot-dot", {"prompt": P, "video": "../elsewhere/clip.mp4"}, "invalid_sidecar", "`../elsewhere/clip.mp4` is not a usable key"),
    case("video-dot-dot-inside", {"prompt": P, "video": "sub/../../../clip.mp4"}, "invalid_sidecar", "not a usable key"),
    case("video-absolute", {"prompt": P, "video": "/incoming/clip.mp4"}, "invalid_sidecar", "not a usable key"),
    case("video-backslash", {"prompt": P, "video": "..\\clip.mp4"}, "invalid_sidecar", "not a usable key"),
    case("video-dot-segment", {"prompt": P, "video": "./shared.mp4"}, "invalid_sidecar", "not a usable key"),
    case("video-http-url", {"prompt": P, "video": "http://127.0.0.1:9/clip.mp4"}, "invalid_sidecar", "only https URLs", "`http://`"),
    case("video-file-url", {"prompt": P, "video": "file:///etc/passwd"}, "invalid_sidecar", "only https URLs", "`file://`"),
    case("video-ftp-url", {"prompt": P, "video": "ftp://example.com/clip.mp4"}, "invalid_sidecar", "`ftp://`"),
    case("video-https-url-gif", {"prompt": P, "video": "https://example.com/clip.gif"}, "video_unsupported", "must end in .mp4"),
    # ---- images ------------------------------------------------------------------------------
    case("reference-http-url", {"prompt": P, "video": "shared.mp4", "referenceImages": ["http://127.0.0.1:9/r.png"]}, "invalid_sidecar", "must be https"),
    case("reference-file-url", {"prompt": P, "video": "shared.mp4", "referenceImages": ["file:///etc/passwd"]}, "invalid_sidecar", "must be https"),
    case("reference-missing", {"prompt": P, "video": "shared.mp4", "referenceImages": ["missing.png"]}, "invalid_sidecar", "`missing.png` was not found"),
    case("reference-dot-dot", {"prompt": P, "video": "shared.mp4", "referenceImages": ["../x.png"]}, "invalid_sidecar", "`../x.png` was not found"),
    case(
        "frame-image-http-url",
        {"prompt": P, "provider": "runware", "video": "shared.mp4", "frameImages": ["http://127.0.0.1:9/f.png"]},
        "invalid_sidecar",
        "must be https",
    ),
    # ---- unicode, spaces and `+` in keys and prompts -----------------------------------------
    case("ünïcødé-日本語", b'{"prompt": "snow",', "invalid_json", "not valid JSON"),
    case("with space", {"prompt": P, "colour": "red"}, "invalid_sidecar", "unknown field `colour`"),
    case("a+b", b"", "invalid_json", "empty"),
    case("snö clip+1", {"prompt": "雪の夜 ❄️"}, "video_unsupported", "not .webm", files={"snö clip+1.webm": "junk"}),
    case("video-key-space-plus", {"prompt": P, "video": "my clip+1.gif"}, "video_unsupported", "my clip+1.gif` is not a video"),
    case("unicode-prompt-bad-option", {"prompt": "雪の夜 ❄️ снег", "numberResults": 2}, "unsupported_option", "`numberResults`"),
]

# Inputs that look odd but are valid: they must reach the provider and complete.
ACCEPTED: list[Case] = [
    case("bom-valid", BOM + json.dumps({"prompt": "snow with a BOM"}).encode(), "", files={"bom-valid.mp4": "clip"}),
    case("ok ünï+plus 日本", {"prompt": "雪の夜 ❄️ with spaces"}, "", files={"ok ünï+plus 日本.mp4": "clip"}),
]


@pytest.fixture(scope="module")
def corpus_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack only this corpus uses: the simulator's request log is the corpus's own."""
    args = ["--schedule-interval", "1", "--env", f"PAIRING_TIMEOUT_SECONDS={PAIRING_SECONDS}"]
    with open_stack(tmp_path_factory.mktemp("bad-input"), *args) as opened:
        yield opened


@pytest.fixture(scope="module")
def media(corpus_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("media")
    return {
        "clip": corpus_stack.clip,
        "long": make_clip(folder / "long.mp4", seconds=31.5, size="64x36", rate=4).read_bytes(),
        "short": make_clip(folder / "short.mp4", seconds=1.0, size="64x36", rate=4).read_bytes(),
        "big": bytes(11 * MIB),
        "junk": b"this is not a video\n" * 8,
    }


def upload_all(stack: Stack, folder: str, cases: list[Case], media: dict[str, bytes], shared: dict[str, str]) -> None:
    """Videos first (shared ones, then each case's), then every sidecar, many at a time."""
    videos = dict(shared)
    for item in cases:
        videos.update(item.files)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda name: stack.put(folder + name, media[videos[name]]), videos))
        list(pool.map(lambda item: stack.put(f"{folder}{item.name}.json", item.body), cases))


def jobs_under(stack: Stack, folder: str) -> dict[str, dict[str, Any]]:
    """Every job whose sidecar is under ``folder``, by sidecar key."""
    found: dict[str, dict[str, Any]] = {}
    arguments: dict[str, Any] = {
        "FilterExpression": "begins_with(sidecarKey, :folder)",
        "ExpressionAttributeValues": {":folder": folder},
        "ConsistentRead": True,
    }
    while True:
        page = stack.table.scan(**arguments)
        found.update((item["sidecarKey"], item) for item in page["Items"])
        if "LastEvaluatedKey" not in page:
            return found
        arguments["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def wait_all(stack: Stack, folder: str, cases: list[Case], timeout: float) -> dict[str, dict[str, Any]]:
    wanted = {f"{folder}{item.name}.json" for item in cases}
    jobs: dict[str, dict[str, Any]] = {}

    def settled() -> bool:
        jobs.update(jobs_under(stack, folder))
        return all(key in jobs and jobs[key]["status"] in ("COMPLETED", "FAILED") for key in wanted)

    try:
        wait_until(settled, timeout, f"{len(wanted)} jobs under {folder} to finish", interval=0.5)
    except AssertionError as exc:
        pending = sorted(key for key in wanted if key not in jobs or jobs[key]["status"] not in ("COMPLETED", "FAILED"))
        raise AssertionError(f"{exc}; still open: {[(key, jobs.get(key, {}).get('status')) for key in pending]}") from None
    return jobs


def test_bad_input_corpus_fails_every_case_with_its_code_and_never_calls_a_provider(corpus_stack: Stack, media: dict[str, bytes]) -> None:
    stack = corpus_stack
    assert len(CASES) >= 40
    assert len({item.name for item in CASES}) == len(CASES)
    marker = f"bad-input-{uuid.uuid4().hex[:8]}"
    folder = f"{stack.prefix}{marker}/"
    calls_before = len(stack.sim.get("/_sim/requests").json())
    started = time.monotonic()

    upload_all(stack, folder, CASES, media, SHARED_FILES)
    jobs = wait_all(stack, folder, CASES, timeout=120)

    problems: list[str] = []
    codes: Counter[str] = Counter()
    for item in CASES:
        job = jobs[f"{folder}{item.name}.json"]
        if job["status"] != "FAILED":
            problems.append(f"{item.name}: {job['status']}, expected FAILED with {item.code}")
            continue
        error = stack.output_json(job["outputPrefix"] + "error.json")
        codes[error.get("code", "?")] += 1
        if error.get("code") != item.code or error.get("stage") != "intake":
            problems.append(f"{item.name}: {error.get('stage')}/{error.get('code')} ({error.get('message')}), expected intake/{item.code}")
            continue
        missing = [words for words in item.says if words not in error["message"]]
        if missing:
            problems.append(f"{item.name}: message {error['message']!r} lacks {missing}")
        if len(error["message"].encode()) > 4096 or "hunter2" in error["message"]:
            problems.append(f"{item.name}: message of {len(error['message'].encode())} bytes (at most 4096, no credentials)")
        if job["history"][-1]["state"] != "FAILED" or "submission" in job:
            problems.append(f"{item.name}: a submission was claimed ({job.get('submission')})")
        if stack.output_keys(job["outputPrefix"]) != [job["outputPrefix"] + "error.json"]:
            problems.append(f"{item.name}: outputs {stack.output_keys(job['outputPrefix'])}")
    elapsed = time.monotonic() - started

    # Zero provider calls: the simulator logged no request, and holds no task, from the corpus. The
    # one read allowed is crun's model schema (a free GET of what the model takes: intake checks a
    # crun sidecar against it); it submits and costs nothing.
    calls = [call for call in stack.sim.get("/_sim/requests").json()[calls_before:] if not (call["method"] == "GET" and "/client/job/Models/" in call["path"])]
    tasks = stack.sim_tasks(marker)
    print(
        f"\nbad-input corpus: {len(CASES)} cases, {sum(codes.values())} FAILED with error.json, "
        f"codes: {dict(sorted(codes.items()))}, provider calls: {len(calls)}, provider tasks: {len(tasks)}, "
        f"{elapsed:.1f} s"
    )
    assert not problems, "\n".join(problems)
    assert calls == []
    assert tasks == []


def test_odd_but_valid_inputs_reach_the_provider(corpus_stack: Stack, media: dict[str, bytes]) -> None:
    """The other side of the corpus: a BOM, unicode, spaces and `+` are not errors."""
    stack = corpus_stack
    marker = f"accepted-{uuid.uuid4().hex[:8]}"
    folder = f"{stack.prefix}{marker}/"
    calls_before = len(stack.sim.get("/_sim/requests").json())
    upload_all(stack, folder, ACCEPTED, media, {})
    jobs = wait_all(stack, folder, ACCEPTED, timeout=90)
    for item in ACCEPTED:
        job = jobs[f"{folder}{item.name}.json"]
        assert job["status"] == "COMPLETED", (item.name, job.get("error"))
        assert json.loads(job["sidecarJson"])["prompt"] == json.loads(item.body.decode("utf-8-sig"))["prompt"]
    assert len(stack.sim_tasks(marker)) == len(ACCEPTED)  # one submission each, and the log sees them
    assert len(stack.sim.get("/_sim/requests").json()) > calls_before
    print(f"\naccepted inputs: {len(ACCEPTED)} cases ({', '.join(item.name for item in ACCEPTED)}) completed, {len(ACCEPTED)} provider tasks")


def test_corpus_files_are_what_they_claim(media: dict[str, bytes], tmp_path: Path) -> None:
    """The long and short clips really are over and under Runware Aleph 2.0's range."""
    from local.media import duration_seconds

    for name, low, high in (("long", 30.5, 40), ("short", 0.5, 1.9)):
        path = tmp_path / f"{name}.mp4"
        path.write_bytes(media[name])
        assert low < duration_seconds(path) < high
