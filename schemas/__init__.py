"""The product's documented schemas as pydantic models: the sidecar, the status API's answers and
the job events. ``tools.gen_docs`` writes the README's tables and ``docs/openapi.json`` from them,
and the tests hold the functions to them.

Not part of the layer: the functions build and check the same shapes without pydantic (importing
it and building these models cost a cold start more than half an ``import boto3``), so pydantic is
a development requirement only.
"""
