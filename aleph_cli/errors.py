"""The CLI's one error type: a message that reads well on one line."""


class CliError(Exception):
    """Printed as ``aleph: <message>``; the command exits 1."""
