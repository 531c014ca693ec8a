import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_image
from graft.cli import app
from graft.data.manifest import read_csv
from graft.errors import RunError
from graft.evaluation.evaluate import evaluate
from graft.model.ensemble import Ensemble
from graft.run import load_model, load_run
from graft.training.ensembling import make_ensemble
from graft.training.fit import fit


@pytest.fixture
def two_runs(folder_data, tiny_config, tmp_path):
    fit(folder_data, tmp_path / "a", tiny_config)
    fit(folder_data, tmp_path / "b", tiny_config.updated({"head.seed": 7, "head.width": 16}))
    return tmp_path / "a", tmp_path / "b"


def test_an_ensemble_of_one_run_is_that_run(two_runs, folder_data, tmp_path):
    make_ensemble([two_runs[0]], tmp_path / "one")
    part = read_csv(two_runs[0] / "manifest.csv")
    _, alone, _ = load_run(two_runs[0]).image_probabilities(part)
    _, together, _ = load_model(tmp_path / "one").image_probabilities(part)
    assert np.allclose(alone, together)
    assert evaluate(tmp_path / "one", folder_data)["S"] == pytest.approx(evaluate(two_runs[0], folder_data)["S"])


def test_weights_average_the_members(two_runs, tmp_path):
    make_ensemble(list(two_runs), tmp_path / "ens", weights=[3.0, 1.0])
    model = load_model(tmp_path / "ens")
    assert isinstance(model, Ensemble) and model.weights == [3.0, 1.0]
    part = read_csv(two_runs[0] / "manifest.csv")
    _, a, _ = load_run(two_runs[0]).image_probabilities(part)
    _, b, _ = load_run(two_runs[1]).image_probabilities(part)
    _, mixed, _ = model.image_probabilities(part)
    assert np.allclose(mixed, 0.75 * a + 0.25 * b)


def test_fitted_weights_lie_on_the_simplex(two_runs, tmp_path):
    results = make_ensemble(list(two_runs), tmp_path / "fitted", fit_weights=True)
    assert sum(results["weights"]) == pytest.approx(1.0) and all(w >= 0 for w in results["weights"])
    assert json.loads((tmp_path / "fitted" / "ensemble.json").read_text())["weights"] == results["weights"]


def test_runs_of_different_classes_are_refused(two_runs, tiny_config, tmp_path):
    for label in ("x", "y"):
        for i in range(6):
            make_image(tmp_path / "other" / label / f"{i}.png", (9, 9, 9) if label == "x" else (250, 250, 9), i)
    fit(tmp_path / "other", tmp_path / "c", tiny_config)
    with pytest.raises(RunError, match="labels differ"):
        make_ensemble([two_runs[0], tmp_path / "c"], tmp_path / "bad")


def test_predict_accepts_an_ensemble(two_runs, folder_data, tmp_path):
    make_ensemble(list(two_runs), tmp_path / "ens")
    image = str(next((folder_data / "red").glob("*.png")))
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "ens"), image, "--json"])
    assert result.exit_code == 0, result.output
    ranking = json.loads(result.output)["ranking"]
    assert len(ranking) == 3 and sum(r["probability"] for r in ranking) == pytest.approx(1.0)


def test_report_compares_models_in_markdown_and_self_contained_html(two_runs, tmp_path):
    make_ensemble(list(two_runs), tmp_path / "ens")
    result = CliRunner().invoke(app, ["report", str(two_runs[0]), str(tmp_path / "ens"), "--out",
                                      str(tmp_path / "report"), "--tta"])
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "report" / "report.md").read_text()
    for expected in ("+ TTA", "ensemble of 2", "reject below", "fusion rule", "most confused", "image top-1",
                     "ECE", "ms/obs", "costs"):
        assert expected in markdown, expected
    page = (tmp_path / "report" / "report.html").read_text()
    assert "data:image/png;base64," in page and "<table>" in page and "src='curves" not in page


def with_test_part(folder_data):
    """The folder's images listed with every fourth one in a test part (an ensemble is then scored on it)."""
    rows = ["path,label,split"] + [f"{p.relative_to(folder_data)},{p.parent.name},{'test' if i % 4 == 0 else ''}"
                                   for i, p in enumerate(sorted(folder_data.rglob("*.png")))]
    (folder_data / "list.csv").write_text("\n".join(rows) + "\n")
    return folder_data / "list.csv"


def test_fitted_weights_come_from_out_of_fold_predictions(two_runs, tiny_config, folder_data, tmp_path):
    assert make_ensemble(list(two_runs), tmp_path / "oof", fit_weights=True)["weights_fitted_on"] == \
        "out-of-fold predictions"
    holdout = tiny_config.updated({"head.selection": "holdout"})
    fit(folder_data, tmp_path / "h1", holdout)
    fit(folder_data, tmp_path / "h2", holdout.updated({"head.seed": 3}))
    with pytest.raises(RunError, match="without a test part the validation split is what the ensemble is scored on"):
        make_ensemble([tmp_path / "h1", tmp_path / "h2"], tmp_path / "val", fit_weights=True)
    listed = with_test_part(folder_data)
    fit(listed, tmp_path / "r1", holdout)  # with a test part the head is refit on train + validation
    fit(listed, tmp_path / "r2", holdout.updated({"head.seed": 3}))
    with pytest.raises(RunError, match="refit on the validation split"):
        make_ensemble([tmp_path / "r1", tmp_path / "r2"], tmp_path / "val", fit_weights=True)
    early_stopped = holdout.updated({"head.refit": False})  # its head never trained on the validation split
    fit(listed, tmp_path / "t1", early_stopped)
    fit(listed, tmp_path / "t2", early_stopped.updated({"head.seed": 3}))
    assert make_ensemble([tmp_path / "t1", tmp_path / "t2"], tmp_path / "val", fit_weights=True)[
        "weights_fitted_on"] == "the validation split"


def test_a_fine_tuned_member_is_weighted_on_validation_images_not_on_head_only_out_of_fold_rows(
        folder_data, tiny_config, tmp_path, monkeypatch):
    from graft.evaluation.plots import reliability_plot
    from graft.finetuning.keep import save_finetuned
    from graft.run import RunFiles, model_out_of_fold, read_manifest, read_out_of_fold
    from graft.training import ensembling as ensemble_module

    listed = with_test_part(folder_data)
    a, b = tmp_path / "a-test", tmp_path / "b-test"
    fit(listed, a, tiny_config)
    fit(listed, b, tiny_config.updated({"head.seed": 7}))
    model = load_run(b)
    save_finetuned(RunFiles(b), model, model.config)  # b now serves a fine-tuned model
    assert read_out_of_fold(b) is not None and model_out_of_fold(b) is None  # the file is the head-only model's
    fitted_on = []
    real = ensemble_module._fit_weights
    monkeypatch.setattr(ensemble_module, "_fit_weights", lambda stacks, kept, e: fitted_on.extend(kept) or real(
        stacks, kept, e))
    results = make_ensemble([a, b], tmp_path / "mixed", fit_weights=True)
    assert results["weights_fitted_on"] == "the validation split (out-of-fold predictions of the cross-fitted members)"
    validation = {r.path for r in read_manifest(a).where("val")}
    assert fitted_on and {r.path for r in fitted_on} == validation
    assert reliability_plot(b, 1.0, tmp_path / "reliability.png") is None  # no out-of-fold rows of its own model
