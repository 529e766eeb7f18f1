"""Run-time settings of the simulator, changeable through ``POST /_sim/config``.

All reads and writes go through one condition variable: worker threads block on it while
``hold`` is on, so a test can observe a task in the running state without sleeping.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

CALLBACK_SHAPES = ("A", "B", "alternate")
DEFAULT_KEYS: dict[str, Any] = {
    "kie": "sim-kie-key",
    "apikley": "sim-apikley-key",
    "runware": "sim-runware-key",
    "crun": "sim-crun-key",
    "replicate": "sim-replicate-key",
    "runway": "sim-runway-key",
}
DEFAULT_DELAY_SECONDS = 3.0
DEFAULT_CALLBACK_TIMEOUT_SECONDS = 15.0  # kie's documented callback timeout
# The read_timeout fault's hold: past a typical client's 30 s read timeout.
DEFAULT_SUBMIT_HOLD_SECONDS = 35.0


@dataclass(frozen=True)
class ProviderKey:
    """A provider's API key and, for kie, the optional webhook HMAC key it signs callbacks with."""

    api_key: str
    webhook_hmac_key: str | None = None


def parse_keys(raw: Any) -> dict[str, ProviderKey]:
    """Accept ``{"kie": "key"}`` or ``{"kie": {"apiKey": ..., "webhookHmacKey": ...}}``.

    The second form is the shape of the product's provider secret, so the same JSON can be used.
    """
    if not isinstance(raw, dict):
        raise ValueError("keys must be a JSON object keyed by provider id")
    keys: dict[str, ProviderKey] = {}
    for provider, value in raw.items():
        if isinstance(value, str) and value:
            keys[str(provider)] = ProviderKey(api_key=value)
        elif isinstance(value, dict) and isinstance(value.get("apiKey"), str) and value["apiKey"]:
            hmac_key = value.get("webhookHmacKey")
            if hmac_key is not None and not isinstance(hmac_key, str):
                raise ValueError(f"keys.{provider}.webhookHmacKey must be a string")
            keys[str(provider)] = ProviderKey(api_key=value["apiKey"], webhook_hmac_key=hmac_key or None)
        else:
            raise ValueError(f"keys.{provider} must be a non-empty string or an object with apiKey")
    return keys


def _check_url(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
        raise ValueError(f"{name} must be an http(s) URL or null")
    return value.rstrip("/")


def _number(value: Any, name: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}")
    return float(value)


def _boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false")
    return value


class Settings:
    """Thread-safe mutable settings. ``snapshot()`` is what ``GET /_sim/config`` returns."""

    def __init__(
        self,
        *,
        keys: dict[str, ProviderKey] | None = None,
        callback_shape: str = "A",
        public_url: str | None = None,
        seed: int | None = None,
    ) -> None:
        self._cond = threading.Condition()
        self._initial: dict[str, Any] = {
            "keys": dict(keys if keys is not None else parse_keys(DEFAULT_KEYS)),
            "callback_shape": callback_shape,
            "public_url": public_url,
            "seed": seed,
        }
        self._shape_counter = 0
        self.keys: dict[str, ProviderKey] = {}
        self.callback_shape = "A"
        self.public_url: str | None = None
        self.seed: int | None = None
        self.delay_seconds = DEFAULT_DELAY_SECONDS
        self.callback_timeout_seconds = DEFAULT_CALLBACK_TIMEOUT_SECONDS
        self.submit_hold_seconds = DEFAULT_SUBMIT_HOLD_SECONDS
        self.hold = False
        self.mirror_http_status = False
        self.crun_callback_wrapped = False
        self.reset()

    def reset(self) -> None:
        """Back to the values given at start (used by ``POST /_sim/reset``)."""
        with self._cond:
            self.keys = dict(self._initial["keys"])
            if self._initial["callback_shape"] not in CALLBACK_SHAPES:
                raise ValueError(f"callback_shape must be one of {', '.join(CALLBACK_SHAPES)}")
            self.callback_shape = self._initial["callback_shape"]
            self.public_url = _check_url(self._initial["public_url"], "public_url")
            self.seed = self._initial["seed"]
            self.delay_seconds = DEFAULT_DELAY_SECONDS
            self.callback_timeout_seconds = DEFAULT_CALLBACK_TIMEOUT_SECONDS
            self.submit_hold_seconds = DEFAULT_SUBMIT_HOLD_SECONDS
            self.hold = False
            self.mirror_http_status = False
            self.crun_callback_wrapped = False
            self._shape_counter = 0
            self._cond.notify_all()

    def update(self, changes: Any) -> None:
        """Apply a partial update; validates everything first so a bad request changes nothing."""
        if not isinstance(changes, dict):
            raise ValueError("config must be a JSON object")
        parsed: dict[str, Any] = {}
        for name, value in changes.items():
            if name == "callback_shape":
                if value not in CALLBACK_SHAPES:
                    raise ValueError(f"callback_shape must be one of {', '.join(CALLBACK_SHAPES)}")
                parsed[name] = value
            elif name == "delay_seconds":
                parsed[name] = _number(value, name, positive=False)
            elif name in ("callback_timeout_seconds", "submit_hold_seconds"):
                parsed[name] = _number(value, name, positive=True)
            elif name == "seed":
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                    raise ValueError("seed must be an integer or null")
                parsed[name] = value
            elif name in ("hold", "mirror_http_status", "crun_callback_wrapped"):
                parsed[name] = _boolean(value, name)
            elif name == "public_url":
                parsed[name] = _check_url(value, name)
            elif name == "keys":
                parsed[name] = parse_keys(value)
            else:
                raise ValueError(f"unknown setting {name!r}")
        with self._cond:
            for name, value in parsed.items():
                setattr(self, name, value)
            if "callback_shape" in parsed:
                self._shape_counter = 0
            self._cond.notify_all()

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return {
                "callback_shape": self.callback_shape,
                "delay_seconds": self.delay_seconds,
                "callback_timeout_seconds": self.callback_timeout_seconds,
                "submit_hold_seconds": self.submit_hold_seconds,
                "seed": self.seed,
                "hold": self.hold,
                "mirror_http_status": self.mirror_http_status,
                "crun_callback_wrapped": self.crun_callback_wrapped,
                "public_url": self.public_url,
                "keys": {
                    name: (key.api_key if key.webhook_hmac_key is None else {"apiKey": key.api_key, "webhookHmacKey": key.webhook_hmac_key})
                    for name, key in self.keys.items()
                },
            }

    def key_for(self, provider: str) -> ProviderKey | None:
        with self._cond:
            return self.keys.get(provider)

    def next_callback_shape(self) -> str:
        """The shape for a new task; ``alternate`` gives A, B, A, ... in submission order."""
        with self._cond:
            if self.callback_shape != "alternate":
                return self.callback_shape
            shape = "AB"[self._shape_counter % 2]
            self._shape_counter += 1
            return shape

    def wait_released(self, stop: threading.Event) -> None:
        """Block while ``hold`` is on (or until the server stops)."""
        with self._cond:
            self._cond.wait_for(lambda: not self.hold or stop.is_set())

    def wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()
