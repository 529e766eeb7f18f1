"""What an input key is, and where a job's outputs go (both are contracts)."""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from typing import Literal

VIDEO_EXTENSIONS = ("mp4", "mov", "webm", "avi", "m4v")
SIDECAR_EXTENSION = "json"
# A folder's defaults for the sidecars at or below it (read with each sidecar, never a job itself).
DEFAULTS_NAME = "_defaults.json"

KeyKind = Literal["sidecar", "defaults", "video", "other"]


@dataclass(frozen=True)
class InputKey:
    key: str
    kind: KeyKind
    stem: str  # the key without its extension, prefix included
    extension: str  # lower case, no dot

    @property
    def folder(self) -> str:
        return posixpath.dirname(self.key)


def classify(key: str) -> InputKey:
    """Decide what an object is from its key; every letter case of an extension counts."""
    name = posixpath.basename(key)
    stem_name, dot, extension = name.rpartition(".")
    if not dot or not stem_name:
        return InputKey(key, "other", key, "")
    extension = extension.lower()
    stem = key[: len(key) - len(extension) - 1]
    if name == DEFAULTS_NAME:
        return InputKey(key, "defaults", stem, extension)
    if extension == SIDECAR_EXTENSION:
        return InputKey(key, "sidecar", stem, extension)
    if extension in VIDEO_EXTENSIONS:
        return InputKey(key, "video", stem, extension)
    return InputKey(key, "other", stem, extension)


def output_prefix(sidecar_key: str, input_prefix: str, job_id: str) -> str:
    """``incoming/team-a/shot1.json`` -> ``team-a/shot1/<jobId>/``."""
    stem = classify(sidecar_key).stem
    if input_prefix and stem.startswith(input_prefix):
        stem = stem[len(input_prefix) :]
    return f"{stem}/{job_id}/"


def job_id_for(bucket: str, key: str, version_marker: str) -> str:
    """Deterministic: the same sidecar object always maps to the same job, a new upload to a new one."""
    digest = hashlib.sha256("\x00".join((bucket, key, version_marker)).encode("utf-8"))
    return digest.hexdigest()[:32]


def variant_job_id(bucket: str, key: str, version_marker: str, index: int) -> str:
    """The job of a sidecar's ``prompts[index]``: deterministic like ``job_id_for``, one per prompt."""
    digest = hashlib.sha256("\x00".join((bucket, key, version_marker, f"prompts[{index}]")).encode("utf-8"))
    return digest.hexdigest()[:32]


def defaults_keys(sidecar_key: str, input_prefix: str, max_depth: int) -> list[str]:
    """The ``_defaults.json`` keys that apply to a sidecar, nearest folder first: its own folder,
    then each parent down to the input prefix's folder, at most ``max_depth`` of them."""
    keys: list[str] = []
    folder = posixpath.dirname(sidecar_key)
    while len(keys) < max_depth:
        candidate = f"{folder}/{DEFAULTS_NAME}" if folder else DEFAULTS_NAME
        if not candidate.startswith(input_prefix):
            break
        keys.append(candidate)
        if not folder:
            break
        folder = posixpath.dirname(folder)
    return keys


def resolve_relative(sidecar_key: str, reference: str, input_prefix: str) -> str | None:
    """Turn a sidecar's key reference into a full key, or None if it escapes the bucket.

    A reference that starts with the input prefix is a full key; any other is relative to the
    sidecar's folder. ``..`` segments and absolute paths are refused.
    """
    reference = reference.strip()
    if not reference or reference.startswith("/") or "\\" in reference:
        return None
    parts = reference.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    if input_prefix and reference.startswith(input_prefix):
        return reference
    folder = posixpath.dirname(sidecar_key)
    return f"{folder}/{reference}" if folder else reference
