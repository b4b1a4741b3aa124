"""``spine-dfl review``: a local web app in which a radiologist reviews scored radiographs one after another.

- ``studies``: the studies of a predictions table (``score``'s output): vertebrae, grades, flags, points;
- ``store``: the reader's edits, merged per field under a lock, saved at once as ``review.csv`` and a
  training manifest ``manifest.csv``; progress and reader-vs-model kappa;
- ``images``: the original radiograph as an 8-bit PNG (window/level in the page);
- ``server``: the HTTP server and JSON API (standard library), token off loopback;
- ``run``: ``review()`` / ``start_review()``, the library entry point (scores a folder first when needed);
- ``static/``: the page (HTML, CSS, JS; package data, nothing loaded from outside).
"""

from __future__ import annotations

from spine_dfl.review.run import ReviewSession, is_loopback, review, start_review
from spine_dfl.review.store import MANIFEST_CSV, REVIEW_CSV, EditError, ReviewStore
from spine_dfl.review.studies import ReviewInputError, Study, Vertebra, load_studies

__all__ = [
    "MANIFEST_CSV", "REVIEW_CSV", "EditError", "ReviewInputError", "ReviewSession", "ReviewStore", "Study",
    "Vertebra", "is_loopback", "load_studies", "review", "start_review",
]
