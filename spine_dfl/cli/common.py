"""Exit statuses and the small text helpers the command modules share."""

from __future__ import annotations

import json
from typing import Any

# 0 done, 1 finished but failed a requirement (--strict, validation errors), 2 bad usage or input.
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def fmt(value: float | None) -> str:
    """A metric for the terminal: three decimals, or n/a when undefined."""
    return "n/a" if value is None else f"{value:.3f}"


def plain(obj: Any) -> Any:
    """A dataclass or dict as JSON-compatible values (paths and other objects as text)."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    return json.loads(json.dumps(obj, default=str))
