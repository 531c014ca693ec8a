import numpy as np
import pytest

from graft.model.fusion import fuse, fuse_observations, ranked

IMAGES = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])


def test_mean_rule():
    assert fuse(IMAGES, "mean") == pytest.approx([0.4, 0.4, 0.2])


def test_max_rule_is_normalised():
    assert fuse(IMAGES, "max") == pytest.approx(np.array([0.6, 0.5, 0.3]) / 1.4)


def test_geometric_rule():
    expected = np.sqrt(IMAGES[0] * IMAGES[1])
    assert fuse(IMAGES, "geometric") == pytest.approx(expected / expected.sum())


def test_borda_rule():
    # image 1 ranks 0>1>2 (points 2,1,0); image 2 ranks 1>2>0 (points 0,2,1) -> totals 2,3,1
    assert fuse(IMAGES, "borda") == pytest.approx(np.array([2, 3, 1]) / 6)


def test_unknown_rule():
    with pytest.raises(ValueError, match="borda"):
        fuse(IMAGES, "vote")


def test_groups_by_observation_in_first_seen_order():
    result = fuse_observations(np.vstack([IMAGES, [[0, 0, 1]]]), ["b", "b", "a"])
    assert result.observations == ["b", "a"] and result.scores[1].tolist() == [0, 0, 1]


def test_ranked_list():
    assert ranked(np.array([0.2, 0.5, 0.3]), ["x", "y", "z"], 2) == [("y", 0.5), ("z", 0.3)]


@pytest.mark.parametrize("rule", ["mean", "max", "geometric", "borda"])
def test_observations_are_fused_as_each_alone_whatever_the_row_order(rule):
    rng = np.random.default_rng(0)
    observations = [str(o) for o in rng.integers(0, 40, 200)]  # interleaved, 1 to ~10 images each
    probabilities = rng.dirichlet(np.ones(7), 200)
    result = fuse_observations(probabilities, observations, rule)
    assert result.observations == list(dict.fromkeys(observations))
    for observation, scores in zip(result.observations, result.scores, strict=True):
        rows = [i for i, o in enumerate(observations) if o == observation]
        assert scores == pytest.approx(fuse(probabilities[rows], rule))
