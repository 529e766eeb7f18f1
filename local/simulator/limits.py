"""Rate limits per protocol (``/_sim/limits``): a provider's account limit on new tasks.

``POST /_sim/limits {"kie": "2/1"}`` lets at most 2 submits per 1 s (a sliding window) reach
kie; the next is refused with kie's own 429 (the ``submit_429`` answer of each protocol, no task
created). ``"none"`` or ``DELETE`` lifts a limit. ``GET /_sim/limits`` answers each limit with
the submits it let through (``accepted``) and refused (``refused``): the 429 count a client met.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Window:
    count: int
    seconds: float
    sent: deque[float] = field(default_factory=deque)
    accepted: int = 0
    refused: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"limit": f"{self.count}/{self.seconds:g}", "accepted": self.accepted, "refused": self.refused}


def _parse(provider: str, raw: Any) -> _Window | None:
    if not isinstance(raw, str):
        raise ValueError(f"limit for {provider}: a string `<tasks>/<seconds>` or `none`")
    if raw.strip().lower() == "none":
        return None
    count, sep, seconds = raw.partition("/")
    try:
        window = _Window(int(count), float(seconds)) if sep else None
    except ValueError:
        window = None
    if window is None or window.count < 1 or window.seconds <= 0:
        raise ValueError(f"limit for {provider}: `{raw}` is not `<tasks>/<seconds>` (e.g. `2/1`)")
    return window


class RateLimits:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def set(self, raw: Any) -> None:
        """Replace the limits of the providers named (others keep theirs)."""
        if not isinstance(raw, dict):
            raise ValueError('limits must be a JSON object, e.g. {"kie": "2/1"}')
        parsed = {str(provider): _parse(str(provider), value) for provider, value in raw.items()}
        with self._lock:
            for provider, window in parsed.items():
                if window is None:
                    self._windows.pop(provider, None)
                else:
                    self._windows[provider] = window

    def clear(self) -> None:
        with self._lock:
            self._windows.clear()

    def admit(self, provider: str) -> bool:
        """Whether one more submit fits the provider's window now (counted either way)."""
        now = time.monotonic()
        with self._lock:
            window = self._windows.get(provider)
            if window is None:
                return True
            while window.sent and window.sent[0] <= now - window.seconds:
                window.sent.popleft()
            if len(window.sent) >= window.count:
                window.refused += 1
                return False
            window.sent.append(now)
            window.accepted += 1
            return True

    def to_json(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {provider: window.to_json() for provider, window in self._windows.items()}
