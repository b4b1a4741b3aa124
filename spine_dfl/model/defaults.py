"""The model's default settings, in plain Python (no torch), so that ``spine_dfl.config`` can use them.

DEFAULT_BRANCH_WEIGHTS: (g, p, side) weights of the fused logits and of the loss; the public
DFL-CNN code's 1, 1, 0.1 (the side branch is a regulariser, not a classifier of its own).
"""

from __future__ import annotations

DEFAULT_BRANCH_WEIGHTS: tuple[float, float, float] = (1.0, 1.0, 0.1)
