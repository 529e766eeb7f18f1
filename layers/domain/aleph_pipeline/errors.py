"""Errors that end a job, with the code, stage and hint that ``error.json`` carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

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
    "insufficient_credits": "Top up the provider account's credits (the message says what the edit costs), then upload the sidecar again.",
    "provider_unavailable": "The provider kept failing; upload the sidecar again to retry.",
    "budget_exceeded": "Raise DailyBudgetUsd/MonthlyBudgetUsd (or wait for the next day or month), then upload the sidecar again.",
    "slot_timeout": (
        "More jobs came than the provider's limits (ProviderRateLimits, ProviderConcurrency) let through within JobDeadlineSeconds; "
        "nothing was sent. Raise the deadline, name another provider in a chain, or upload the sidecar again."
    ),
    "generation_failed": "The provider could not make the edit; adjust the prompt or input.",
    "result_unavailable": "The provider's result could not be fetched; it may have expired.",
    "result_rejected": "The provider's result URL was not on its allowed hosts.",
    "result_format_mismatch": (
        "The provider sent another container than `outputFormat` asked for (error.json says which); "
        "nothing was kept. Ask for the format it sends (leave `outputFormat` out for MP4), or report it to the provider."
    ),
    "deadline_exceeded": "The provider did not finish in time; upload the sidecar again to retry.",
    "submit_ambiguous": (
        "The provider may have run and charged this task. Look for it in the provider's task list or dashboard "
        "(its callback URL contains the job id) before uploading the sidecar again, or you may pay twice."
    ),
    "sidecar_replaced": "Nothing to do: the newer upload of the sidecar runs as a job of its own.",
}

# What each code means and where it happens: with HINTS, the source of the README's error-code
# table (``python -m tools.gen_docs``). Every code in HINTS has an entry here (a test checks).
MEANINGS: dict[str, tuple[str, str]] = {
    "invalid_json": (STAGE_INTAKE, "the sidecar is empty, not UTF-8, or not JSON"),
    "invalid_sidecar": (STAGE_INTAKE, "a field is wrong or unknown, or the prompt is too long for the provider (the message names it)"),
    "sidecar_too_large": (STAGE_INTAKE, "the sidecar is over 256 KiB"),
    "unsupported_option": (STAGE_INTAKE, "the provider/model cannot honour a field"),
    "unknown_provider": (STAGE_INTAKE, "the provider is not one this stack offers"),
    "unknown_model": (STAGE_INTAKE, "the model is not one the provider offers"),
    "video_not_found": (STAGE_INTAKE, "the video the sidecar names does not exist"),
    "video_unsupported": (STAGE_INTAKE, "the video's format is one the provider refuses"),
    "video_too_large": (STAGE_INTAKE, "the video is over the provider's size limit"),
    "video_duration": (STAGE_INTAKE, "the video is shorter or longer than the model takes (Runware Aleph 2.0: 2-30 s)"),
    "pairing_timeout": (STAGE_INTAKE, "the sidecar's video did not arrive within `PairingTimeoutSeconds`"),
    "sidecar_replaced": (STAGE_INTAKE, "the sidecar changed before its video arrived (the new upload is a new job)"),
    "provider_not_configured": (STAGE_SUBMIT, "no API key for the provider in the stack's secret"),
    "provider_rejected": (STAGE_SUBMIT, "the provider refused the request (bad key, no credits, validation)"),
    "insufficient_credits": (STAGE_SUBMIT, "the provider's free estimate says the account cannot pay for the edit (crun.ai); nothing was created or spent"),
    "provider_unavailable": (STAGE_SUBMIT, "the provider kept answering 429/5xx or could not be reached"),
    "budget_exceeded": (
        STAGE_SUBMIT,
        "the job's cost estimate does not fit in what is left of the daily or monthly budget (or no price is known); nothing was sent",
    ),
    "slot_timeout": (STAGE_SUBMIT, "the job waited for a provider slot (its pace or its tasks in flight) until `JobDeadlineSeconds` passed; nothing was sent"),
    "generation_failed": (STAGE_PROVIDER, "the provider could not make the edit (moderation, bad input, ...)"),
    "deadline_exceeded": (STAGE_PROVIDER, "the provider did not finish within `JobDeadlineSeconds`"),
    "submit_ambiguous": (STAGE_SUBMIT, "the submit got no clear answer (a 5xx, a timeout after sending) and no callback or poll settled it by the deadline"),
    "result_unavailable": (STAGE_FINALIZE, "the result expired, vanished or exceeded `MaxResultBytes`"),
    "result_rejected": (STAGE_FINALIZE, "the result URL was not https on the provider's own hosts"),
    "result_format_mismatch": (STAGE_FINALIZE, "the result's bytes are not the container asked for (MP4 for a WEBM or MOV request, ...)"),
}


@dataclass
class JobError(Exception):
    """A failure that ends a job (``retryable`` says whether trying again could help).

    Its message is bounded (``MAX_MESSAGE_CHARS``, with a marker saying how much was cut) and its
    detail texts too, whatever produced them (a sidecar with thousands of problems, a provider's
    megabyte of error text): the FAILED record must fit a DynamoDB item (400 KB) and an
    EventBridge entry (256 KB).
    """

    code: str
    message: str
    stage: str
    retryable: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    MAX_MESSAGE_CHARS: ClassVar[int] = 4000
    MAX_DETAIL_CHARS: ClassVar[int] = 500

    def __post_init__(self) -> None:
        self.message = self.shorten(self.message, self.MAX_MESSAGE_CHARS)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @property
    def hint(self) -> str:
        return HINTS.get(self.code, "")

    @staticmethod
    def shorten(value: Any, limit: int) -> str:
        """``value`` as text in at most ``limit`` characters, storable anywhere: a lone surrogate (JSON's
        ``\\ud800``, which UTF-8 cannot encode) is written as its escape, and a cut says how much it cut."""
        text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
        if len(text) <= limit:
            return text
        if limit < 200:  # a quoted value: an ellipsis says enough
            return text[: max(limit - 1, 0)] + "…"
        kept = limit - 48  # room for the marker: the result is at most ``limit``, so shortening twice changes nothing
        return f"{text[:kept]}… [truncated: {len(text) - kept} more characters]"

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "code": self.code,
            "message": self.shorten(self.message, self.MAX_MESSAGE_CHARS),
            "stage": self.stage,
            "retryable": self.retryable,
            "hint": self.hint,
        }
        if self.details:
            record["details"] = {
                self.shorten(name, self.MAX_DETAIL_CHARS): self.shorten(value, self.MAX_DETAIL_CHARS) if isinstance(value, str) else value
                for name, value in self.details.items()
            }
        return record


class TransientError(Exception):
    """A failure worth retrying later by redelivering the event (nothing was changed)."""
