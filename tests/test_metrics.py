import numpy as np
import pytest

from graft.evaluation.metrics import lifeclef_score, top_k, true_label_ranks


def test_ranks_from_scores():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    assert true_label_ranks(scores, [2, 0]).tolist() == [2, 1]


def test_s_averages_users_equally_not_observations():
    # user a: ranks 1 and 4 -> (1 + 0.25) / 2 = 0.625; user b: rank 2 -> 0.5; S = (0.625 + 0.5) / 2
    assert lifeclef_score([1, 4, 2], ["a", "a", "b"]) == pytest.approx(0.5625)
    # per-observation mean would be (1 + .25 + .5) / 3 = 0.5833: S must differ from it
    assert lifeclef_score([1, 4, 2], ["a", "a", "b"]) != pytest.approx(1.75 / 3)


def test_unknown_label_counts_zero():
    assert lifeclef_score([np.inf, 1], ["a", "a"]) == pytest.approx(0.5)


def test_top_k():
    ranks = [1, 2, 3, 6]
    assert (top_k(ranks, 1), top_k(ranks, 3), top_k(ranks, 5)) == (0.25, 0.75, 0.75)
