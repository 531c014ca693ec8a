import numpy as np
import pytest

from graft.model.calibration import coverage_table, expected_calibration_error, fit_temperature, negative_log_likelihood
from graft.model.fusion import softmax


def overconfident(n=2000, classes=5, seed=0):
    """Logits that are right 60% of the time but claim ~99%: scaling them down must help."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    predicted = np.where(rng.random(n) < 0.6, labels, rng.integers(0, classes, n))
    logits = rng.normal(0, 0.5, (n, classes))
    logits[np.arange(n), predicted] += 8.0
    return logits, labels


def test_temperature_scaling_lowers_nll_and_ece_on_overconfident_logits():
    logits, labels = overconfident()
    temperature = fit_temperature(logits[:1000], labels[:1000])
    assert temperature > 1.5
    before, after = softmax(logits[1000:]), softmax(logits[1000:] / temperature)
    assert negative_log_likelihood(after, labels[1000:]) < negative_log_likelihood(before, labels[1000:])
    assert expected_calibration_error(after, labels[1000:]) < expected_calibration_error(before, labels[1000:]) / 2
    assert (after.argmax(1) == before.argmax(1)).all()  # one scalar: the ranking never changes


def test_ece_hand_example():
    # two samples in the 0.9 bin, one right one wrong: |0.5 - 0.9| = 0.4 for that bin, weight 2/3;
    # one sample at 0.6, right: |1 - 0.6| = 0.4, weight 1/3
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    assert expected_calibration_error(probabilities, np.array([0, 1, 0]), bins=10) == pytest.approx(0.4)


def test_coverage_table():
    scores = np.array([[0.9, 0.1], [0.4, 0.6], [0.55, 0.45]])
    rows = coverage_table(scores, np.array([0, 0, 0]), [0.5, 0.7])
    assert rows[0] == {"threshold": 0.5, "coverage": 1.0, "accuracy": pytest.approx(2 / 3)}
    assert rows[1] == {"threshold": 0.7, "coverage": pytest.approx(1 / 3), "accuracy": 1.0}
