"""Evaluation: LifeCLEF S and top-k per observation (``metrics.py``), ``graft evaluate`` (``evaluate.py``),
``graft report`` (``report.py``, ``plots.py``). ``graft.evaluate`` is the function; this package re-exports nothing
that would shadow its modules."""

from graft.evaluation.metrics import lifeclef_score, observation_scores, score_probabilities, top_k

__all__ = ["lifeclef_score", "observation_scores", "score_probabilities", "top_k"]
