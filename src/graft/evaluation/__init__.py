"""Stage 6, evaluation: LifeCLEF S and top-k per observation, ``graft evaluate``, and ``graft report``."""

from graft.evaluation.evaluate import evaluate
from graft.evaluation.metrics import lifeclef_score, observation_scores, score_probabilities, top_k

__all__ = ["evaluate", "lifeclef_score", "observation_scores", "score_probabilities", "top_k"]
