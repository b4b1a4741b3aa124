"""spine-dfl: vertebra-level classification of spine radiographs with DFL-CNN."""

__version__ = "0.1.0"
