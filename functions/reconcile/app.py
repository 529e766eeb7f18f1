"""Reconcile: on a schedule, poll providers for overdue jobs and finish or fail what is stuck."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from aleph_pipeline.log import logger
from aleph_pipeline.reconcile import reconcile


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    return reconcile(time_left=lambda: context.get_remaining_time_in_millis() / 1000).as_dict()
