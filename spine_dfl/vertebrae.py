"""TEMPORARY shim: the level vocabulary moved to :mod:`spine_dfl.io.vocabulary`; import it from there."""

from spine_dfl.io.vocabulary import LEVELS, level_sort_key, normalize_level, sort_levels  # noqa: F401
