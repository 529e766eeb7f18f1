"""Sending webhook callbacks and recording them, shared by every provider protocol."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from local.simulator.store import CallbackAttempt, iso_ms, utc_now

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_MASK = "***"


def mask_token(url: str) -> str:
    """Hide the value of any ``token`` query parameter: it is a per-job secret of the client."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    masked = [(key, _MASK if key.lower() == "token" else value) for key, value in pairs]
    return urlunsplit(parts._replace(query=urlencode(masked, safe="*")))


def post_json(url: str, payload: dict[str, Any], *, timeout: float, headers: dict[str, str] | None = None) -> CallbackAttempt:
    """POST ``payload`` as JSON; never raises, the outcome is in the returned attempt."""
    sent_at = iso_ms(utc_now()) or ""
    status: int | None = None
    error: str | None = None
    excerpt = ""
    if urlsplit(url).scheme not in ("http", "https"):
        error = "callBackUrl is not an http(s) URL"
    else:
        request = urllib.request.Request(
            url,
            data=json.dumps(payload, ensure_ascii=False).encode("utf-8"),
            method="POST",
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with _OPENER.open(request, timeout=timeout) as answer:
                status = answer.status
                excerpt = answer.read(500).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:  # the receiver answered, with an error status
            status = exc.code
            excerpt = exc.read(500).decode("utf-8", "replace")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
    return CallbackAttempt(url=mask_token(url), status=status, error=error, body=payload, sent_at=sent_at, response_excerpt=excerpt)
