"""Refusing request fields a provider does not document, the way every protocol here does.

Each protocol keeps its documented field names as a table; a field outside it is refused (no
provider here keeps unknown fields), and the message names the field and, for a near miss
(``watermark`` for ``waterMark``, ``callBackUrl`` for ``callback_url``), the documented name.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def _folded(name: str) -> str:
    """A name without case or separators, so ``callBackUrl`` meets ``callback_url``."""
    return name.lower().replace("_", "").replace("-", "")


def documented_name(name: str, documented: Iterable[str]) -> str | None:
    """The documented field ``name`` most likely meant, or None when none is close."""
    by_folded = {_folded(known): known for known in documented}
    match = difflib.get_close_matches(_folded(name), list(by_folded), n=1, cutoff=0.8)
    return by_folded[match[0]] if match else None


def unknown_field_message(name: str, documented: Iterable[str], *, where: str = "") -> str:
    """``unknown field `watermark` (did you mean `waterMark`?)`` -- ``where`` prefixes nested names."""
    known = sorted(documented)
    suggestion = documented_name(name, known)
    text = f"unknown field `{where}{name}`"
    if suggestion is not None:
        return f"{text} (did you mean `{where}{suggestion}`?)"
    return f"{text} (known fields: {', '.join(known)})"


def unknown_fields(given: Iterable[str], documented: Iterable[str], *, where: str = "") -> list[str]:
    """One message per field of ``given`` that ``documented`` does not list, in name order."""
    known = frozenset(documented)
    return [unknown_field_message(name, known, where=where) for name in sorted(set(given) - known)]
