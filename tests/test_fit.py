import json

import numpy as np
import pytest

from conftest import COLOURS, make_image
from graft.errors import DataError, RunError
from graft.evaluation.evaluate import evaluate
from graft.features import engines
from graft.run import RESULT_KEYS, evaluation_part, load_run
from graft.training.fit import fit, prepare_manifest

RUN_FILES = ["config.yaml", "labels.json", "backbone.json", "head.safetensors", "manifest.csv", "history.csv",
             "results.json", "results.md", "curves.png", "problems.txt"]


@pytest.fixture
def forwards(monkeypatch):
    """Count images through the backbone, however they get there."""
    counter = {"images": 0}
    original = engines.FeatureEngine.__call__

    def counting(self, images):
        counter["images"] += len(images)
        return original(self, images)

    monkeypatch.setattr(engines.FeatureEngine, "__call__", counting)
    return counter


def test_fit_writes_the_run_directory(folder_data, tiny_config, tmp_path):
    result = fit(folder_data, tmp_path / "run", tiny_config)
    assert all((tmp_path / "run" / name).is_file() for name in RUN_FILES)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(RESULT_KEYS) <= set(saved) and saved["evaluated_on"] == "val"
    assert saved["n_images"] == result.results["n_val_images"] == 6
    assert saved["top1"] > 0.6  # colours are separable even for random features
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch") and len(history) - 1 == result.results["head_epochs"]


def test_second_fit_performs_zero_backbone_forwards(folder_data, tiny_config, tmp_path, forwards):
    fit(folder_data, tmp_path / "a", tiny_config)
    first = forwards["images"]
    second = fit(folder_data, tmp_path / "b", tiny_config.updated({"head.width": 16}))
    assert second.results["features_extracted"] == 0
    # the only forwards of the second run are the uncached throughput probe on the evaluation sample
    assert forwards["images"] - first == second.results["n_images"]


def test_bad_image_is_skipped_listed_and_the_run_goes_on(folder_data, tiny_config, tmp_path):
    (folder_data / "red" / "zero.png").write_bytes(b"")
    result = fit(folder_data, tmp_path / "run", tiny_config)
    assert result.results["skipped_images"] == 1
    assert "zero.png" in (tmp_path / "run" / "problems.txt").read_text()


def test_one_class_stops_before_any_extraction(tmp_path, tiny_config, forwards):
    for i in range(4):
        make_image(tmp_path / "one" / "only" / f"{i}.png", (1, 2, 3), i)
    with pytest.raises(DataError, match="at least 2"):
        fit(tmp_path / "one", tmp_path / "run", tiny_config)
    assert forwards["images"] == 0 and not (tmp_path / "run").exists()


def test_load_run_predict_and_evaluate_agree_with_fit(folder_data, tiny_config, tmp_path):
    result = fit(folder_data, tmp_path / "run", tiny_config)
    model = load_run(tmp_path / "run")
    red = sorted((folder_data / "red").glob("*.png"))[:3]
    answer = model.identify(red)
    assert sum(p for _, p in model.identify(red, top=len(COLOURS)).ranking) == pytest.approx(1.0)
    assert len(answer.per_image) == 3 and answer.ranking[0][1] >= answer.ranking[-1][1]
    scores = evaluate(tmp_path / "run", folder_data)
    assert set(RESULT_KEYS) <= set(scores) and scores["n_images"] == 24
    assert np.isfinite(result.results["S"])


def test_incomplete_run_is_named(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(RunError, match="graft fit"):
        load_run(tmp_path / "run")


def test_calibration_is_fitted_and_a_reject_threshold_answers_unknown(folder_data, tiny_config, tmp_path):
    result = fit(folder_data, tmp_path / "run", tiny_config)
    assert {"temperature", "ece_before", "ece_after", "coverage"} <= set(result.results)
    model = load_run(tmp_path / "run")
    assert model.temperature == pytest.approx(result.results["temperature"], abs=1e-4)
    photos = sorted((folder_data / "green").glob("*.png"))[:2]
    top = model.identify(photos).ranking[0][1]
    model.config = model.config.updated({"predict.reject_threshold": (top + 1.0) / 2})  # just above the answer
    assert model.identify(photos).unknown
    model.config = model.config.updated({"predict.reject_threshold": top * 0.99})  # just below
    assert not model.identify(photos).unknown


def test_holdout_selection_skips_calibration_when_the_head_was_refit_on_the_validation_part(folder_data, tiny_config,
                                                                                              tmp_path):
    rows = ["path,label,split"] + [f"{p.relative_to(folder_data)},{p.parent.name},{'test' if i % 4 == 0 else ''}"
                                   for i, p in enumerate(sorted(folder_data.rglob("*.png")))]
    (folder_data / "list.csv").write_text("\n".join(rows) + "\n")
    result = fit(folder_data / "list.csv", tmp_path / "run", tiny_config.updated({"head.selection": "holdout"}))
    assert result.results["evaluated_on"] == "test" and result.results["head_refit_epochs"] > 0
    assert result.results["calibration"].startswith("skipped") and load_run(tmp_path / "run").temperature == 1.0


def test_concatenated_backbones_fit_and_answer_alike_from_files_and_uploads(folder_data, tiny_config, tmp_path):
    from PIL import Image

    config = tiny_config.updated({"backbone.name": "test_efficientnet+test_efficientnet"})
    result = fit(folder_data, tmp_path / "run", config)
    assert result.results["backbone"] == "test_efficientnet+test_efficientnet"
    model = load_run(tmp_path / "run")
    photos = sorted((folder_data / "red").glob("*.png"))[:2]
    from graft.data.manifest import ImageRecord, Manifest

    _, cached, _ = model.image_probabilities(Manifest([ImageRecord(p, "", "o") for p in photos]))
    uploaded = model.probabilities([Image.open(p).convert("RGB") for p in photos], ["", ""])
    assert np.allclose(cached, uploaded, atol=1e-5)


def test_a_second_writer_of_the_same_run_directory_is_refused(folder_data, tiny_config, tmp_path):
    import fcntl

    from graft.run import RunFiles

    files = RunFiles(tmp_path / "run")
    files.root.mkdir()
    with files.lock.open("a+") as held:  # another `graft fit` holds the run
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("graft (pid 4242)")
        held.flush()
        with pytest.raises(RunError, match=r"being written by graft \(pid 4242\).*another --out"):
            fit(folder_data, files.root, tiny_config)
    fit(folder_data, files.root, tiny_config)  # free again
    assert files.results.is_file()


def test_a_run_that_stopped_before_its_results_is_refused(folder_data, tiny_config, tmp_path, monkeypatch):
    import graft.training.fit

    fit(folder_data, tmp_path / "run", tiny_config)
    load_run(tmp_path / "run")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed after the new head was written, before its results

    monkeypatch.setattr(graft.training.fit, "write_data", crash)
    with pytest.raises(KeyboardInterrupt):
        fit(folder_data, tmp_path / "run", tiny_config.updated({"head.seed": 5}))
    with pytest.raises(RunError, match="incomplete run"):
        load_run(tmp_path / "run")


def test_throughput_times_serving_not_the_engines_one_off_export(folder_data, tiny_config, tmp_path, monkeypatch):
    """A run whose features were all cached made no engine while fitting; its img/s must still be the steady state,
    so the graph is exported (once) into the run's cache before the clock starts, not inside the timed pass."""
    fit(folder_data, tmp_path / "run", tiny_config)
    graphs = tmp_path / "cache" / "graphs"
    for graph in graphs.glob("*.onnx"):
        graph.unlink()
    monkeypatch.setattr(engines, "_sessions", {})  # a new process
    exports = []
    original = engines.export_backbone
    monkeypatch.setattr(engines, "export_backbone", lambda b, p: exports.append(p) or original(b, p))
    model = load_run(tmp_path / "run")
    assert model.measure_throughput(evaluation_part(prepare_manifest(folder_data, tiny_config)[0])) > 0
    assert len(exports) == 1 and exports[0].parent == graphs
