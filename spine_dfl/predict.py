"""Temporary shim: moved to `spine_dfl.engine.predict`; the lead removes this file once nothing imports it."""

from spine_dfl.engine.predict import *  # noqa: F401,F403
