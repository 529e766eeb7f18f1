"""Provider API keys from one Secrets Manager secret (a JSON object keyed by provider id)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .config import get_settings
from .errors import STAGE_SUBMIT, JobError, TransientError

# Secrets Manager answers that mean the secret itself is missing or unusable (a setup problem);
# any other failure to read it (throttling, a 5xx, a network blip) is retried, never a job failure.
SETUP_ERRORS = frozenset({"ResourceNotFoundException", "InvalidRequestException", "DecryptionFailure", "AccessDeniedException"})


def _provider_entry(provider_id: str) -> Any:
    from aws_lambda_powertools.utilities import parameters  # imported on first use: cold starts

    settings = get_settings()
    try:
        secret = parameters.get_secret(settings.provider_secret_id, transform="json", max_age=settings.secret_max_age_seconds)
    except parameters.exceptions.GetParameterError as exc:
        causes = list(_causes(exc))
        code = next((_error_code(cause) for cause in causes if _error_code(cause)), None)
        if code not in SETUP_ERRORS and not any(type(cause).__name__ == "ParamValidationError" for cause in causes):
            raise TransientError(f"the provider secret could not be read just now ({code or type(causes[-1]).__name__}); retrying") from exc
        raise JobError("provider_not_configured", f"the provider secret could not be read ({code})", STAGE_SUBMIT, retryable=True) from exc
    except parameters.exceptions.TransformParameterError as exc:
        raise JobError("provider_not_configured", "the provider secret is not a JSON object", STAGE_SUBMIT, retryable=True) from exc
    if not isinstance(secret, dict):
        raise JobError("provider_not_configured", "the provider secret must be a JSON object keyed by provider id", STAGE_SUBMIT, retryable=True)
    return secret.get(provider_id)


def provider_api_key(provider_id: str) -> str:
    """The API key for a provider; the error names the provider, never the value."""
    entry = _provider_entry(provider_id)
    key = entry.get("apiKey") if isinstance(entry, dict) else entry
    if not isinstance(key, str) or not key:
        raise JobError("provider_not_configured", f"no API key for provider `{provider_id}` in the provider secret", STAGE_SUBMIT, retryable=True)
    return key


def provider_webhook_key(provider_id: str) -> str | None:
    """The key a provider signs its callbacks with, when the account has one (kie.ai's webhookHmacKey)."""
    entry = _provider_entry(provider_id)
    key = entry.get("webhookHmacKey") if isinstance(entry, dict) else None
    return key if isinstance(key, str) and key else None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from or while handling (Powertools wraps botocore's error)."""
    cause: BaseException | None = exc
    while cause is not None:
        yield cause
        cause = cause.__cause__ or cause.__context__


def _error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ClientError (None for anything else)."""
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return str(code) if code else None
