"""Callback: a provider's POST /callbacks/{provider}/{jobId}?token=... -> the job's next state."""

from __future__ import annotations

import base64
import json
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.utilities.typing import LambdaContext

from aleph_pipeline.callbacks import receive_callback
from aleph_pipeline.log import logger

app = APIGatewayHttpResolver()


@app.post("/callbacks/<provider>/<job_id>")
def callback(provider: str, job_id: str) -> Response[str]:
    logger.thread_safe_clear_keys()

    event = app.current_event
    raw = event.body or ""
    try:
        body = base64.b64decode(raw, validate=True) if event.is_base64_encoded else raw.encode("utf-8")
    except (ValueError, UnicodeError):  # binascii.Error is a ValueError; a lone surrogate cannot be UTF-8
        return Response(status_code=400, content_type="application/json", body=json.dumps({"message": "the callback body cannot be read"}))
    token = (event.query_string_parameters or {}).get("token")
    answer = receive_callback(provider, job_id, token, body, event.headers or {})
    return Response(status_code=answer.status, content_type="application/json", body=json.dumps(answer.body))


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
