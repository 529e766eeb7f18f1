"""``aleph dashboard``: the URL of the stack's CloudWatch dashboard (its ``DashboardUrl`` output)."""

from __future__ import annotations

from aleph_cli.errors import CliError
from aleph_cli.stack import StackInfo

OUTPUT = "DashboardUrl"


def dashboard_url(stack: StackInfo) -> str:
    if stack.endpoint_url is not None:
        # moto serves the AWS APIs, not the console or CloudWatch's metrics from logs (EMF).
        raise CliError(
            f"the local stack ({stack.name}) has no dashboard: CloudWatch dashboards exist only in a deployed stack. "
            "Locally, the metrics are the EMF lines the handlers print in their logs in the stack's folder; "
            "for the dashboard, run `aleph --stack NAME dashboard` against a deployed stack"
        )
    described = stack.client("cloudformation").describe_stacks(StackName=stack.name)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    if OUTPUT not in outputs:
        raise CliError(f"stack {stack.name} has no output {OUTPUT}: it was deployed before the dashboard existed; `sam deploy` it again")
    return str(outputs[OUTPUT])
