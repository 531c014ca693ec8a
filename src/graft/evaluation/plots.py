"""Plots of a run's out-of-fold predictions for ``graft report``: a reliability diagram (confidence vs accuracy,
before and after the temperature) and the coverage / accuracy trade-off of a reject threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from graft.files import atomic_write
from graft.model.fusion import softmax
from graft.run import model_out_of_fold, read_manifest

BINS = 10


def reliability_plot(run: Path, temperature: float, out: Path) -> Path | None:
    """The PNG at ``out``, or None when the run has no out-of-fold predictions of its model (holdout runs, ensembles,
    a kept fine-tuned model)."""
    saved = model_out_of_fold(run)
    if saved is None:
        return None
    paths, logits = saved
    label_of = {r.path: r.label for r in read_manifest(run)}
    labels = sorted({label_of[p] for p in paths})
    truth = np.array([labels.index(label_of[p]) for p in paths])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (reliability, coverage) = plt.subplots(1, 2, figsize=(10, 3.8))
    edges = np.linspace(0, 1, BINS + 1)
    for name, probabilities in (("T = 1", softmax(logits)), (f"T = {temperature:.2f}", softmax(logits / temperature))):
        confidence, correct = probabilities.max(1), probabilities.argmax(1) == truth
        which = np.clip(np.digitize(confidence, edges[1:-1]), 0, BINS - 1)
        used = [b for b in range(BINS) if (which == b).any()]
        reliability.plot([confidence[which == b].mean() for b in used], [correct[which == b].mean() for b in used],
                         "o-", label=name)
        thresholds = np.linspace(0, 1, 51)
        answered = [(confidence >= t).mean() for t in thresholds]
        accuracy = [correct[confidence >= t].mean() if (confidence >= t).any() else np.nan for t in thresholds]
        coverage.plot(answered, accuracy, label=name)
    reliability.plot([0, 1], [0, 1], ":", color="grey")
    reliability.set(xlabel="confidence (top probability)", ylabel="accuracy", title="reliability, out of fold")
    coverage.set(xlabel="coverage (share answered)", ylabel="accuracy of the answered",
                 title="reject threshold: coverage vs accuracy")
    for axis in (reliability, coverage):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    atomic_write(out, lambda handle: figure.savefig(handle, format="png", dpi=100))
    plt.close(figure)
    return out
