"""TOML for a run's config.toml without a third-party writer: scalars, lists of scalars and
tables (nested dicts), the shapes :meth:`TrainConfig.to_dict` holds. Read back by tomllib, it
gives the dict it was written from (tests/test_train.py compares it with tomli-w's output)."""

from __future__ import annotations

import math
import re
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
# control characters as \uXXXX, except those TOML has a short escape for
_ESCAPES = str.maketrans(
    {chr(c): f"\\u{c:04x}" for c in (*range(0x20), 0x7F)}
    | {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
)


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string(key)


def _string(text: str) -> str:
    return '"' + text.translate(_ESCAPES) + '"'


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(item, where) for item in value) + "]"
    raise TypeError(f"config value {where} is a {type(value).__name__}, which config.toml cannot hold")


def dumps(data: dict[str, Any]) -> str:
    """``data`` as TOML: its plain values first, then each dict value as a table (nested dicts as
    dotted sub-tables), in insertion order."""
    lines: list[str] = []

    def table(values: dict[str, Any], name: str) -> None:
        plain = [(k, v) for k, v in values.items() if not isinstance(v, dict)]
        tables = [(k, v) for k, v in values.items() if isinstance(v, dict)]
        if name:
            lines.extend([""] if lines else [])
            lines.append(f"[{name}]")
        lines.extend(f"{_key(k)} = {_value(v, (name + '.' if name else '') + k)}" for k, v in plain)
        for key, sub in tables:
            table(sub, f"{name}.{_key(key)}" if name else _key(key))

    table(data, "")
    return "\n".join(lines) + "\n"
