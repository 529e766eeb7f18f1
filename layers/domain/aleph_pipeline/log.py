"""The one Powertools logger of the pipeline, shared by the handlers and the domain.

A single instance (not per-module child loggers) so that domain code also logs, with the job id
as correlation key, when it runs outside a Lambda handler (the local tools, benchmarks, tests).
"""

from aws_lambda_powertools import Logger

logger = Logger()
