"""Package attributes that import their module on first use.

Several packages re-export names whose modules pull in torch, MONAI or pandas. Loading them on
first use keeps ``spine-dfl --help``, ``validate`` and config reading free of those imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for `package` that loads ``package.<names[name]>`` on first use.

    `names` maps each public name to the submodule (relative to `package`) that defines it.
    """

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
