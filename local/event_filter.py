"""Lambda event filtering (the EventBridge pattern syntax), the subset event source mappings use.

A pattern is a JSON object. Each key names a field of the record; its value is either a nested
pattern (the field must be an object that matches it) or a list of allowed values. A list
matches when the record's value (or any element of it, if it is a list) equals one of the exact
values, or satisfies one of the operators ``prefix``, ``suffix``, ``equals-ignore-case``,
``anything-but``, ``numeric`` and ``exists``. A record matches a mapping's FilterCriteria when it
matches any of its filters.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

OPERATORS = frozenset({"prefix", "suffix", "equals-ignore-case", "anything-but", "numeric", "exists"})
_NUMERIC_OPS = frozenset({"=", "<", "<=", ">", ">="})


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
    for key, rule in pattern.items():
        present = key in record
        value = record.get(key)
        if isinstance(rule, Mapping):
            if not present or not matches(rule, value):
                return False
        elif not _field_matches(rule, present, value):
            return False
    return True


def matches_any(patterns: Iterable[Mapping[str, Any]], record: Any) -> bool:
    """FilterCriteria semantics: no filters pass everything, else any matching filter does."""
    patterns = list(patterns)
    return not patterns or any(matches(p, record) for p in patterns)


def _validate(pattern: Mapping[str, Any], path: str) -> None:
    for key, rule in pattern.items():
        where = f"{path}.{key}" if path else str(key)
        if isinstance(rule, Mapping):
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


def _field_matches(rules: Sequence[Any], present: bool, value: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    for rule in rules:
        if isinstance(rule, Mapping) and "exists" in rule:
            if rule["exists"] is (present and not isinstance(value, Mapping)):
                return True
            continue
        if present and any(_value_matches(rule, v) for v in values):
            return True
    return False


def _value_matches(rule: Any, value: Any) -> bool:
    if isinstance(rule, Mapping):
        ((name, arg),) = rule.items()
        if name == "prefix":
            return isinstance(value, str) and value.startswith(arg)
        if name == "suffix":
            return isinstance(value, str) and value.endswith(arg)
        if name == "equals-ignore-case":
            return isinstance(value, str) and value.casefold() == arg.casefold()
        if name == "numeric":
            return _is_number(value) and all(_compare(value, op, number) for op, number in zip(arg[::2], arg[1::2], strict=True))
        if name == "anything-but":
            if isinstance(arg, Mapping):
                return isinstance(value, str) and not _value_matches(arg, value)
            excluded = arg if isinstance(arg, list) else [arg]
            return not any(_value_matches(x, value) for x in excluded)
        return False
    if rule is None or isinstance(rule, bool):
        return value is rule
    if _is_number(rule):
        return _is_number(value) and float(value) == float(rule)
    return isinstance(value, str) and value == rule


def _compare(value: float, op: str, number: float) -> bool:
    if op == "=":
        return float(value) == float(number)
    if op == "<":
        return value < number
    if op == "<=":
        return value <= number
    if op == ">":
        return value > number
    return value >= number


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))
