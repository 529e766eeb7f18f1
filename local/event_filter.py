"""Lambda event filtering (the EventBridge pattern syntax), matched by moto's own pattern engine.

A pattern is a JSON object. Each key names a field of the record; its value is either a nested
pattern (the field must be an object that matches it) or a list of allowed values: exact values
or the operators ``prefix``, ``suffix``, ``equals-ignore-case``, ``anything-but``, ``numeric`` and
``exists``; ``{"$or": [pattern, ...]}`` matches when any of its patterns does. Those are what
Lambda's filter syntax documents; ``load_pattern`` refuses the rest (EventBridge's ``wildcard`` and
``cidr`` among them). A record matches a mapping's FilterCriteria when it matches any of its filters.
Matching is ``moto.events.models.EventPattern`` (what moto's EventBridge runs), not our own code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from moto.events.models import EventPattern

OPERATORS = frozenset({"prefix", "suffix", "equals-ignore-case", "anything-but", "numeric", "exists"})
OR = "$or"
_NUMERIC_OPS = frozenset({"=", "<", "<=", ">", ">="})


class _LambdaEventPattern(EventPattern):
    """moto's engine, with JSON's types kept apart: ``true`` is not ``1`` (in Python, True == 1)."""

    def _does_item_match_filters(self, item: Any, filters: list[Any]) -> bool:
        if not isinstance(item, list):
            filters = [f for f in filters if isinstance(f, Mapping) or isinstance(f, bool) == isinstance(item, bool)]
        return bool(super()._does_item_match_filters(item, filters))


def load_pattern(pattern: str | Mapping[str, Any]) -> dict[str, Any]:
    """Parse (if a JSON string) and validate a pattern; raises ValueError when it is not one."""
    loaded = json.loads(pattern) if isinstance(pattern, str) else pattern
    if not isinstance(loaded, Mapping):
        raise ValueError("a filter pattern must be a JSON object")
    _validate(loaded, path="")
    return dict(loaded)


def matches(pattern: Mapping[str, Any], record: Any) -> bool:
    """Whether ``record`` matches ``pattern``."""
    if not isinstance(record, Mapping):
        return False
    plain = json.loads(json.dumps(record, default=str))  # the JSON Lambda filters (moto re-encodes it too)
    return bool(_LambdaEventPattern(None, dict(pattern)).matches_event(plain))


def matches_any(patterns: Iterable[Mapping[str, Any]], record: Any) -> bool:
    """FilterCriteria semantics: no filters pass everything, else any matching filter does."""
    patterns = list(patterns)
    return not patterns or any(matches(p, record) for p in patterns)


def _validate(pattern: Mapping[str, Any], path: str) -> None:
    for key, rule in pattern.items():
        where = f"{path}.{key}" if path else str(key)
        if key == OR:
            if not isinstance(rule, list) or len(rule) < 2 or not all(isinstance(p, Mapping) for p in rule):
                raise ValueError(f"{where}: $or takes a list of two or more patterns")
            for index, alternative in enumerate(rule):
                _validate(alternative, f"{where}[{index}]")
        elif isinstance(rule, Mapping):
            _validate(rule, where)
        elif isinstance(rule, list):
            for item in rule:
                if isinstance(item, Mapping):
                    _validate_operator(item, where)
                elif not _is_scalar(item):
                    raise ValueError(f"{where}: list items must be values or operator objects")
        else:
            raise ValueError(f"{where}: a pattern value must be an object or a list, got {rule!r}")


def _validate_operator(item: Mapping[str, Any], where: str) -> None:
    if len(item) != 1:
        raise ValueError(f"{where}: an operator object has exactly one key, got {sorted(item)}")
    ((name, arg),) = item.items()
    if name not in OPERATORS:
        raise ValueError(f"{where}: unsupported operator {name!r} (supported: {', '.join(sorted(OPERATORS))})")
    if name == "exists" and not isinstance(arg, bool):
        raise ValueError(f"{where}: exists takes true or false")
    if name in ("prefix", "suffix", "equals-ignore-case") and not isinstance(arg, str):
        raise ValueError(f"{where}: {name} takes a string")
    if name == "numeric":
        if not isinstance(arg, list) or not arg or len(arg) % 2:
            raise ValueError(f"{where}: numeric takes [op, number, ...]")
        for op, number in zip(arg[::2], arg[1::2], strict=True):
            if op not in _NUMERIC_OPS or not _is_number(number):
                raise ValueError(f"{where}: bad numeric condition {op!r} {number!r}")
    if name == "anything-but":
        if isinstance(arg, Mapping):
            _validate_operator(arg, where)
        elif isinstance(arg, list):
            if not all(_is_scalar(v) for v in arg):
                raise ValueError(f"{where}: anything-but takes values")
        elif not _is_scalar(arg):
            raise ValueError(f"{where}: anything-but takes a value, a list or an operator")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))
