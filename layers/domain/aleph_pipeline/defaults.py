"""Folder defaults: a ``_defaults.json`` in a folder of the input prefix gives fields to every
sidecar at or below it (a contract).

The nearest folder wins, the sidecar's own fields win over all (a field the sidecar sets to
``null`` drops a default). Fields merge whole: a sidecar's ``metadata`` replaces a default
``metadata``, it is not merged into it. Defaults are read with the sidecar, so a job records the
defaults it was made with; changing a defaults file later changes no job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import storage
from .errors import STAGE_INTAKE, JobError, TransientError
from .keys import defaults_keys
from .outputs import SIDECAR_SOURCE
from .sidecar import MAX_SIDECAR_BYTES, Sidecar, SidecarInvalid, read_document

# Folders read above a sidecar (one HEAD each, and a GET where a defaults file is).
MAX_DEFAULTS_DEPTH = 16
# Fields that belong to each sidecar: a default prompt or video would make every job the same.
NOT_DEFAULTS = ("prompt", "prompts", "video")


@dataclass(frozen=True)
class FolderDefaults:
    key: str
    fields: dict[str, Any]


def load_defaults(bucket: str, sidecar_key: str, input_prefix: str) -> list[FolderDefaults]:
    """The defaults that apply to a sidecar, nearest folder first, each checked.

    Raises ``JobError`` naming the defaults file that is not valid.
    """
    found: list[FolderDefaults] = []
    for key in defaults_keys(sidecar_key, input_prefix, MAX_DEFAULTS_DEPTH):
        info = storage.head(bucket, key)
        if info is None:
            continue
        if info.size > MAX_SIDECAR_BYTES:
            message = f"the folder defaults `{key}` are {info.size} bytes; at most {MAX_SIDECAR_BYTES} bytes are accepted"
            raise JobError("sidecar_too_large", message, STAGE_INTAKE)
        raw = storage.read_bytes(info, MAX_SIDECAR_BYTES)
        if raw is None:
            raise TransientError(f"the folder defaults `{key}` changed while they were read")
        found.append(FolderDefaults(key, parse_defaults(key, raw)))
    return found


def parse_defaults(key: str, raw: bytes) -> dict[str, Any]:
    """The fields of the defaults file ``key``, each valid as a sidecar field."""
    fields = read_document(raw, f"the folder defaults `{key}`")
    misplaced = [name for name in NOT_DEFAULTS if name in fields]
    if misplaced:
        names = ", ".join(f"`{name}`" for name in misplaced)
        raise JobError("invalid_sidecar", f"the folder defaults `{key}`: {names} cannot be a default (each sidecar gives its own)", STAGE_INTAKE)
    try:
        Sidecar.from_document({**fields, "prompt": "-"})  # the fields alone: the prompt is each sidecar's
    except SidecarInvalid as exc:
        raise JobError("invalid_sidecar", f"the folder defaults `{key}`: {exc}", STAGE_INTAKE) from exc
    return fields


def merge(document: dict[str, Any], defaults: list[FolderDefaults]) -> tuple[dict[str, Any], dict[str, str]]:
    """The sidecar ``document`` over its ``defaults`` (nearest first), and where each field came from
    (a defaults key, or ``"sidecar"``)."""
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer in reversed(defaults):
        for name, value in layer.fields.items():
            merged[name], sources[name] = value, layer.key
    for name, value in document.items():
        if value is None and name in sources:
            del merged[name], sources[name]  # an explicit null drops the default
            continue
        merged[name], sources[name] = value, SIDECAR_SOURCE
    return merged, sources


def naming_sources(error: JobError, sources: dict[str, str]) -> JobError:
    """``error`` with the defaults file of each field it names that came from one (a default the
    provider cannot honour is fixed in that file, not in the sidecar)."""
    from_defaults = [f"`{name}` from `{source}`" for name, source in sources.items() if source != SIDECAR_SOURCE and f"`{name}" in error.message]
    if not from_defaults:
        return error
    return JobError(error.code, f"{error.message} (folder defaults: {', '.join(from_defaults)})", error.stage, error.retryable, error.details)
