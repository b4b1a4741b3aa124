"""``spine-dfl serve``: a DICOM node that receives studies, scores each once it is stable, and
sends the results back (see ``node`` for the flow, ``spool`` for durable reception, ``queue``
for the study states, ``scoring`` for the study scorer, ``run`` for ``run_node`` (the command),
``status`` for the queue summary)."""

from spine_dfl.serve.node import Node, NodeError, ScoreOutcome, result_uid_seed
from spine_dfl.serve.run import run_node
from spine_dfl.serve.scoring import StudyScorer
from spine_dfl.serve.sender import Destination, RetryPolicy, SendError
from spine_dfl.serve.status import format_status, status, study_tag

__all__ = [
    "Destination",
    "Node",
    "NodeError",
    "RetryPolicy",
    "ScoreOutcome",
    "SendError",
    "StudyScorer",
    "format_status",
    "result_uid_seed",
    "run_node",
    "status",
    "study_tag",
]
