"""Callback: a provider's POST /callbacks/{provider}/{jobId}?token=... -> the job's next state.

API Gateway routes only that one route here, so the handler reads the HTTP API event itself: a
router (Powertools' event handler imports asyncio and every event data class) would cost this
function's cold start about a sixth of `import boto3` for nothing it uses.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from aleph_pipeline.callbacks import Answer, receive_callback
from aleph_pipeline.log import logger


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.thread_safe_clear_keys()
    path = event.get("pathParameters") or {}
    provider, job_id = path.get("provider"), path.get("jobId")
    if not provider or not job_id:
        return _http(Answer(404, {"message": "no such job"}))
    raw = event.get("body") or ""
    try:
        body = base64.b64decode(raw, validate=True) if event.get("isBase64Encoded") else raw.encode("utf-8")
    except (ValueError, UnicodeError):  # binascii.Error is a ValueError; a lone surrogate cannot be UTF-8
        return _http(Answer(400, {"message": "the callback body cannot be read"}))
    token = (event.get("queryStringParameters") or {}).get("token")
    return _http(receive_callback(provider, job_id, token, body, event.get("headers") or {}))


def _http(answer: Answer) -> dict[str, Any]:
    """The HTTP API's answer (payload format 2.0)."""
    return {"statusCode": answer.status, "headers": {"Content-Type": "application/json"}, "body": json.dumps(answer.body), "isBase64Encoded": False}
