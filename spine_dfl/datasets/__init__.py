"""Public data sets in: ``spine-dfl import FORMAT SOURCE OUT`` turns a published layout into a manifest.

One module per format (``verse``, ``buu``, ``vindr``; ``vindr_located`` adds the locator's per-vertebra
rows), the shared pieces in ``common``, and ``IMPORTERS``, the registry the command reads. Every importer
writes OUT whole or not at all (a staging folder renamed into place), references the images it need not
convert, and lists in ``import_report.json`` what it could not map. Formats:
``docs/datasets/`` and ``/work/shared/reference/real-world.md`` (public data sets).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spine_dfl.io.errors import InputError

if TYPE_CHECKING:  # the importers (and pandas) load on first use: `spine-dfl --help` stays fast
    from spine_dfl.datasets.common import ImportResult

__all__ = ["FORMATS", "IMPORTERS", "import_dataset"]


def _verse(source: Path, out: Path, **options: Any) -> ImportResult:
    from spine_dfl.datasets.verse import import_verse

    return import_verse(source, out, **options)


def _buu(source: Path, out: Path, **options: Any) -> ImportResult:
    from spine_dfl.datasets.buu import import_buu

    return import_buu(source, out, **options)


def _vindr(source: Path, out: Path, **options: Any) -> ImportResult:
    from spine_dfl.datasets.vindr import import_vindr

    return import_vindr(source, out, **options)


# format -> (importer, the options it takes besides seed and overwrite)
IMPORTERS: dict[str, tuple[Callable[..., ImportResult], tuple[str, ...]]] = {
    "verse": (_verse, ("views", "grades")),
    "buu": (_buu, ()),
    "vindr": (_vindr, ("locator",)),
}
FORMATS: tuple[str, ...] = tuple(IMPORTERS)


def import_dataset(fmt: str, source: str | Path, out: str | Path, *, seed: int = 0, overwrite: bool = False,
                   **options: Any) -> ImportResult:
    """Import ``source`` in format ``fmt`` into ``out``; an option the format does not take is refused
    (InputError), an option left None is the format's default."""
    if fmt not in IMPORTERS:
        raise InputError(f"unknown data set format {fmt!r} (known: {', '.join(FORMATS)})")
    importer, accepted = IMPORTERS[fmt]
    given = {name: value for name, value in options.items() if value is not None}
    wrong = sorted(set(given) - set(accepted))
    if wrong:
        flags = ", ".join("--" + name.replace("_", "-").replace("views", "ap") for name in wrong)
        raise InputError(f"import {fmt}: {flags} does not apply to this format")
    source = Path(source)
    if not source.is_dir():
        raise InputError(f"{source}: not a folder (SOURCE is the data set's top folder)")
    return importer(source, Path(out), seed=seed, overwrite=overwrite, **given)
