"""Workflows: the runs that compose the layers below into one command each.

- ``train``: load the config, train (``engine``), write the validation report (``report``);
- ``evaluate``: a grader checkpoint on a manifest split into a report, with the header gate's warning;
- ``located``: the grader on the locator's crops beside the manifest's crops (``evaluate --locator``);
- ``demo``: synth -> train the grader and the locator -> the view gate -> evaluate -> explain.

Only ``cli`` sits above this package; nothing below imports it.
"""
