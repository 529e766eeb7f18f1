"""Errors that end a job, with the code, stage and hint that ``error.json`` carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Stages a job can fail in.
STAGE_INTAKE = "intake"
STAGE_SUBMIT = "submit"
STAGE_PROVIDER = "provider"
STAGE_FINALIZE = "finalize"

HINTS: dict[str, str] = {
    "invalid_json": "The sidecar must be a UTF-8 JSON object. Fix it and upload it again.",
    "invalid_sidecar": "Fix the fields named in the message and upload the sidecar again.",
    "sidecar_too_large": "A sidecar is a small JSON file (at most 256 KiB). Upload a smaller one.",
    "unsupported_option": "Remove the option or choose a provider/model that supports it.",
    "unknown_provider": "Use one of the provider ids named in the message.",
    "unknown_model": "Use one of the model ids named in the message, or leave `model` out.",
    "video_not_found": "Upload the video next to the sidecar, or fix the sidecar's `video` field.",
    "video_unsupported": "Use one of the video formats named in the message.",
    "video_too_large": "Trim or compress the video below the provider's limit.",
    "video_duration": "Trim (or lengthen) the video to the duration range named in the message.",
    "pairing_timeout": "Upload the video, then upload the sidecar again to start a new job.",
    "provider_not_configured": "Put the provider's API key into the stack's provider secret, then upload the sidecar again.",
    "provider_rejected": "The provider refused the request; the message says why.",
    "provider_unavailable": "The provider kept failing; upload the sidecar again to retry.",
    "generation_failed": "The provider could not make the edit; adjust the prompt or input.",
    "result_unavailable": "The provider's result could not be fetched; it may have expired.",
    "result_rejected": "The provider's result URL was not on its allowed hosts.",
    "deadline_exceeded": "The provider did not finish in time; upload the sidecar again to retry.",
}


@dataclass
class JobError(Exception):
    """A failure that ends a job (``retryable`` says whether trying again could help)."""

    code: str
    message: str
    stage: str
    retryable: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @property
    def hint(self) -> str:
        return HINTS.get(self.code, "")

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "stage": self.stage,
            "retryable": self.retryable,
            "hint": self.hint,
        }
        if self.details:
            record["details"] = self.details
        return record


class TransientError(Exception):
    """A failure worth retrying later by redelivering the event (nothing was changed)."""
