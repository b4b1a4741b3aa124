"""Temporary shim: moved to `spine_dfl.engine.train`; the lead removes this file once nothing imports it."""

from spine_dfl.engine.train import *  # noqa: F401,F403
