"""Provider adapters behind one interface; adding a provider touches only this package."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import httpx

from ..config import Settings, get_settings
from ..errors import STAGE_INTAKE, JobError
from ..secrets import provider_api_key, provider_webhook_key
from .base import CallbackInvalid, CallbackUnauthorized, Outcome, Provider, ProviderDocs, ProviderError, ResultItem, SubmitRequest, VideoInfo
from .crun import CrunProtocol
from .kie import KieProtocol
from .replicate import ReplicateProtocol
from .runware import MODELS as RUNWARE_MODELS
from .runware import RunwareProtocol
from .runway import RunwayProtocol

__all__ = [
    "PROVIDER_IDS",
    "USER_AGENT",
    "CallbackInvalid",
    "CallbackUnauthorized",
    "Outcome",
    "Provider",
    "ProviderError",
    "ResultItem",
    "SubmitRequest",
    "VideoInfo",
    "build_provider",
    "get_provider",
]

# Provider id -> (production base URL, constructor). Result hosts are the provider's own CDNs
# (a host matches itself and its subdomains: kie's tempfile., file., tempfileb., static.aiquickdraw.com
# and tempfile.redpandaai.co); a stack can widen or narrow them with RESULT_HOSTS.
_REGISTRY: dict[str, tuple[str, Callable[..., Provider], tuple[str, ...], tuple[str, ...]]] = {
    "kie": ("https://api.kie.ai", KieProtocol, ("aleph",), ("kie.ai", "aiquickdraw.com", "redpandaai.co")),
    "apikley": ("https://api.apikley.ru", KieProtocol, ("aleph",), ("apikley.ru", "kie.ai", "aiquickdraw.com", "redpandaai.co")),
    # Videos come from vm.runware.ai (the docs' examples), images from im.runware.ai.
    "runware": ("https://api.runware.ai", RunwareProtocol, RUNWARE_MODELS, ("vm.runware.ai", "im.runware.ai")),
    # crun's result CDN is not documented: its own domains (crunai.com serves its static files);
    # ResultHostsOverride / RESULT_HOSTS widens the list when results come from elsewhere.
    "crun": ("https://api.crun.ai", CrunProtocol, ("runway/gen-4-aleph",), ("crun.ai", "crunai.com")),
    "replicate": ("https://api.replicate.com", ReplicateProtocol, ("runwayml/gen4-aleph",), ("replicate.delivery",)),
    "runway": ("https://api.dev.runwayml.com", RunwayProtocol, ("aleph2",), ("dnznrvs05pmza.cloudfront.net", "d2jqrm6oza8nb6.cloudfront.net")),
}
PROVIDER_IDS = tuple(_REGISTRY)
# Sent on every provider request and result download: kie's CDN refuses Python's default user
# agent (403, "error code: 1010"). The version follows pyproject.toml's (a test checks).
USER_AGENT = "aleph-pipeline/0.1.0"


def provider_docs() -> list[tuple[str, tuple[str, ...], ProviderDocs | None]]:
    """Each provider's id, models (the default first) and what its adapter declares (for the docs)."""
    return [(provider_id, entry[2], getattr(entry[1], "docs", None)) for provider_id, entry in _REGISTRY.items()]


def _http_client(read_timeout: float) -> httpx.Client:
    # Generous read timeout for slow provider front ends (PROVIDER_READ_TIMEOUT_SECONDS), short
    # connect timeout: a connect failure is the only one we can safely retry.
    return httpx.Client(timeout=httpx.Timeout(read_timeout, connect=5.0), follow_redirects=False, headers={"User-Agent": USER_AGENT})


@cache
def get_provider(provider_id: str) -> Provider:
    settings: Settings = get_settings()
    if provider_id not in _REGISTRY:
        raise JobError(
            "unknown_provider",
            f"provider `{provider_id}` is not available; use one of: {', '.join(PROVIDER_IDS)}",
            STAGE_INTAKE,
        )
    return build_provider(
        provider_id,
        base_url=settings.provider_endpoints.get(provider_id),
        api_key=lambda: provider_api_key(provider_id),
        webhook_key=lambda: provider_webhook_key(provider_id),
        http=_http_client(settings.provider_read_timeout_seconds),
        result_hosts=tuple(settings.result_hosts.get(provider_id, ())),
    )


def build_provider(provider_id: str, *, base_url: str | None = None, http: httpx.Client, **keys_and_hosts: Any) -> Provider:
    """The adapter of a registered provider, at ``base_url`` (default: its production API): what
    ``get_provider`` builds from the settings, and ``aleph doctor`` with a key of its own."""
    production_url, constructor, models, hosts = _REGISTRY[provider_id]
    return constructor(
        id=provider_id, base_url=(base_url or production_url).rstrip("/"), http=http, models=models, default_result_hosts=hosts, **keys_and_hosts
    )
