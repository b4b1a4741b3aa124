"""Gates: what is refused before and after the models look.

- :mod:`~spine_dfl.gate.header`: the input gate from the DICOM header, before any model (not a
  projection radiograph; a header that says another body part or a frontal view).
- :mod:`~spine_dfl.gate.view`: the learned lateral-spine-view score and orientation (image gate).
- :mod:`~spine_dfl.gate.column`: whether what the locator found is a lateral vertebral column.

A gate's refusal is a one-line reason: the failed file's reason in ``predictions.csv`` and its
count in ``summary.json``.
"""
