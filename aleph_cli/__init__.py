"""``aleph``: submit edits to an aleph-pipeline stack, follow them, and fetch their outputs.

The command-line front end is ``aleph_cli.main``; the functions it is made of (``aleph_cli.jobs``)
are what ``make demo`` uses too.
"""
