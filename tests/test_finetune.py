import csv
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from conftest import COLOURS, fixture_seed, make_image
from graft.errors import ConfigError
from graft.finetuning.finetune import finetune
from graft.finetuning.keep import save_finetuned
from graft.model.head import HeadBag, members_of
from graft.run import RunFiles, load_run, read_manifest, read_results
from graft.training.families import fit_head_of
from graft.training.fit import fit, labelled_features
from graft.training.head_training import resolve_class_weights


@pytest.fixture
def run(folder_data, tiny_config, tmp_path):
    config = tiny_config.updated({"finetune.batch_size": 6, "finetune.num_workers": 0})
    fit(folder_data, tmp_path / "run", config)
    return tmp_path / "run"


def overrides(**extra):
    return {"finetune.epochs": 2} | extra


def test_zero_learning_rate_reproduces_head_only(run):
    result = finetune(run, overrides(**{"finetune.lr": 1e-12}), progress=False)
    for key in ("S", "top1", "image_top1"):
        assert result.finetuned[key] == pytest.approx(result.head_only[key])
    history = (run / "finetune-history.csv").read_text().splitlines()
    assert len(history) == 3 and "val_S" in history[0] and "lr-SGD" in history[0]


def test_batchnorm_stays_in_inference_mode_unless_asked(run):
    before = load_run(run).backbone.model.bn1.running_mean.clone()

    def tuned_running_mean(freeze: bool):
        captured = {}

        class Capture(Callback):
            def on_train_end(self, trainer, module):
                captured["mean"] = module.backbone.bn1.running_mean.clone()

        finetune(run, overrides(**{"finetune.freeze_bn": freeze}), progress=False, callbacks=[Capture()])
        return captured["mean"]

    assert torch.equal(tuned_running_mean(True), before)
    assert not torch.equal(tuned_running_mean(False), before)


def test_train_only_top_blocks(run):
    captured = {}

    class Capture(Callback):
        def on_train_end(self, trainer, module):
            captured.update({k: v.clone() for k, v in module.backbone.state_dict().items()})

    start = load_run(run).backbone.model.state_dict()
    finetune(run, overrides(**{"finetune.train_blocks": 1, "finetune.lr": 0.1}), progress=False,
             callbacks=[Capture()])
    assert torch.equal(captured["conv_stem.weight"], start["conv_stem.weight"])  # frozen stem
    last_stage = [k for k in start if k.startswith("blocks.") and k.endswith("weight") and "bn" not in k][-1]
    assert not torch.equal(captured[last_stage], start[last_stage])


def test_min_vote_drops_low_votes_and_keeps_unvoted(run):
    manifest = (run / "manifest.csv").read_text().splitlines()
    header, rows = manifest[0], manifest[1:]
    rows = [r.replace(",,train", ",1,train", 1) if i % 2 == 0 else r for i, r in enumerate(rows)]
    (run / "manifest.csv").write_text("\n".join([header, *rows]) + "\n")
    seen = {}

    class Count(Callback):
        def on_train_start(self, trainer, module):
            seen["n"] = len(trainer.train_dataloader.dataset)

    finetune(run, overrides(**{"finetune.min_vote": 2, "finetune.epochs": 1}), progress=False, callbacks=[Count()])
    voted_low = sum(",1,train" in r for r in rows)
    assert voted_low > 0 and seen["n"] == 18 - voted_low


def test_class_weights_from_file(tmp_path):
    labels = ["a", "b", "c"]
    (tmp_path / "w.json").write_text(json.dumps({"a": 2.0, "c": 0.5}))
    assert resolve_class_weights(str(tmp_path / "w.json"), labels, np.array([0])).tolist() == [2.0, 1.0, 0.5]
    (tmp_path / "w.csv").write_text("label,weight\nb,3\n")
    assert resolve_class_weights(str(tmp_path / "w.csv"), labels, np.array([0])).tolist() == [1.0, 3.0, 1.0]
    (tmp_path / "bad.json").write_text(json.dumps({"zebra": 1}))
    with pytest.raises(ConfigError, match="zebra"):
        resolve_class_weights(str(tmp_path / "bad.json"), labels, np.array([0]))


class KillDuringEpoch(Callback):
    """Simulates a kill in the middle of epoch ``epoch`` (0-based), after the previous epoch was checkpointed."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated kill")


def final_weights(run):
    return torch.load(run / "finetune" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def test_resume_continues_an_interrupted_run_exactly(run, tmp_path):
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    settings = overrides(**{"finetune.epochs": 3, "finetune.lr": 0.001, "finetune.patience": 10})
    finetune(twin, settings, progress=False)  # uninterrupted
    with pytest.raises(RuntimeError, match="simulated kill"):
        finetune(run, settings, progress=False, callbacks=[KillDuringEpoch(1)])
    assert torch.load(run / "finetune" / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0
    result = finetune(run, settings, resume=True, progress=False)
    assert result.epochs == 3
    for directory in (run, twin):  # last.ckpt holds the final epoch (0-based 2), whether or not it was the best
        assert torch.load(directory / "finetune" / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 2
    resumed, straight = final_weights(run), final_weights(twin)
    worst = max(float((resumed[k].float() - straight[k].float()).abs().max()) for k in straight)
    assert worst < 1e-4, worst  # float reductions may differ in the last bits; a lost RNG state or epoch would not


def test_resume_without_checkpoint_says_so(run):
    from graft.errors import RunError

    with pytest.raises(RunError, match="nothing to resume"):
        finetune(run, overrides(), resume=True, progress=False)


def test_kept_finetuned_model_is_what_load_run_serves(run):
    model = load_run(run)
    with torch.no_grad():
        model.backbone.model.conv_stem.weight.mul_(0.5)
    save_finetuned(RunFiles(run), model, model.config)
    reloaded = load_run(run)
    assert torch.equal(reloaded.backbone.model.conv_stem.weight, model.backbone.model.conv_stem.weight)
    assert (run / "head-only.safetensors").is_file()


def test_two_process_ddp_gathers_validation_once(tmp_path, tiny_config):
    # 5 validation images over 2 ranks: the sampler pads to 6; metrics must count 5
    for label_index, (label, count) in enumerate(zip(COLOURS, (8, 8, 5), strict=True)):
        for i in range(count):
            make_image(tmp_path / "data" / label / f"{i}.png", COLOURS[label], seed=fixture_seed(label_index, i))
    config = tiny_config.updated({"finetune.batch_size": 2, "finetune.num_workers": 0, "finetune.lr": 1e-12})
    result = fit(tmp_path / "data", tmp_path / "run", config)
    assert result.results["n_val_images"] == 5
    command = [sys.executable, "-m", "graft", "finetune", str(tmp_path / "run"), "--devices", "2", "--epochs", "1",
               "--no-progress"]
    process = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    header, row = (tmp_path / "run" / "finetune-history.csv").read_text().splitlines()[:2]
    values = dict(zip(header.split(","), row.split(","), strict=True))
    assert float(values["val_images"]) == 5
    # with a zero learning rate the gathered metrics equal the single-process evaluation of the same model
    assert float(values["val_S"]) == pytest.approx(result.results["S"])


class KillAfterTraining(Callback):
    """Simulates a kill after the last epoch was checkpointed, before the better model was kept."""

    def on_train_end(self, trainer, module):
        raise RuntimeError("simulated kill")


def history_epochs(run) -> list[str]:
    header, *rows = (run / "finetune-history.csv").read_text().splitlines()
    return [dict(zip(header.split(","), row.split(","), strict=True))["epoch"] for row in rows]


def test_resume_after_the_last_epoch_was_checkpointed_finishes_the_run(run):
    settings = overrides(**{"finetune.epochs": 2, "finetune.lr": 0.001, "finetune.patience": 10})
    with pytest.raises(RuntimeError, match="simulated kill"):
        finetune(run, settings, progress=False, callbacks=[KillAfterTraining()])
    result = finetune(run, settings, resume=True, progress=False)
    assert result.epochs == 2 and result.kept in ("finetuned", "head-only")
    assert history_epochs(run) == ["0", "1"]


def test_resume_keeps_the_epochs_finished_before_the_kill_in_the_history(run):
    settings = overrides(**{"finetune.epochs": 3, "finetune.lr": 0.001, "finetune.patience": 10})
    with pytest.raises(RuntimeError, match="simulated kill"):
        finetune(run, settings, progress=False, callbacks=[KillDuringEpoch(1)])
    finetune(run, settings, resume=True, progress=False)
    assert history_epochs(run) == ["0", "1", "2"]
    first = (run / "finetune-history.csv").read_text().splitlines()[1]
    assert first.count(",,") < first.count(",")  # epoch 0 kept its values, not an empty row


def test_a_tampered_checkpoint_is_refused_and_never_runs_code(run, tmp_path):
    import pathlib
    import shutil

    from graft.errors import RunError

    marker = tmp_path / "code-ran"

    class Crafted:
        def __reduce__(self):
            return pathlib.Path.touch, (marker,)

    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": Crafted()}, crafted)
    settings = overrides(**{"finetune.epochs": 1})
    with pytest.raises(RuntimeError, match="simulated kill"):
        finetune(run, settings, progress=False, callbacks=[KillAfterTraining()])
    files = RunFiles(run)
    last = torch.load(files.last_checkpoint, weights_only=True)  # graft's own checkpoints are plain data
    for state in last["callbacks"].values():
        if "best_model_path" in state:
            state["best_model_path"] = str(crafted)  # a run directory received from someone else
    torch.save(last, files.last_checkpoint)
    shutil.copy(crafted, files.best_checkpoint)
    with pytest.raises(RunError, match="not a weights-only checkpoint"):
        finetune(run, settings, resume=True, progress=False)
    shutil.copy(crafted, files.last_checkpoint)
    with pytest.raises(Exception, match=r"(?i)weights.only|unpickl"):
        finetune(run, settings, resume=True, progress=False)
    assert not marker.exists()


def _module(compile: bool):
    from graft.config import FineTuneConfig, HeadConfig
    from graft.features.backbones import create_backbone
    from graft.finetuning.module import FineTuneModule, ValidationInfo
    from graft.model.head import build_head

    backbone = create_backbone("test_efficientnet", pretrained=False, image_size=32)
    head = build_head(backbone.num_features, 3, HeadConfig(width=16, dropout=0.0))  # deterministic in training mode
    return FineTuneModule(backbone.model, head, FineTuneConfig(compile=compile), ValidationInfo(np.zeros(0, int), [], [],
                                                                                               "mean"))


def test_the_compiled_training_forward_computes_what_eager_does():
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    module = _module(True)
    torch.testing.assert_close(module.training_forward(images), module(images), atol=1e-4, rtol=1e-4)
    assert module._compiled not in (None, False)  # it really ran compiled


def test_a_failing_compile_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken(function):
        def run(images):
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    module, images = _module(True), torch.randn(2, 3, 32, 32)
    with pytest.warns(UserWarning, match="torch.compile failed .*no C\\+\\+ compiler"):
        first = module.training_forward(images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(module.training_forward(images), first)


class SlowAfterEpoch(Callback):
    """Makes the budget run out at a known point: after epoch ``epoch``'s validation, every batch takes a second."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_batch_end(self, trainer, *args):
        if trainer.current_epoch >= self.epoch:
            import time

            time.sleep(1.0)


def test_a_time_budget_stops_training_and_keeps_the_best_finished_epoch(run):
    settings = overrides(**{"finetune.epochs": 5, "finetune.max_minutes": 0.5 / 60, "finetune.patience": 10})
    result = finetune(run, settings, progress=False, callbacks=[SlowAfterEpoch(1)])
    assert result.epochs < 5 and result.kept in ("finetuned", "head-only") and history_epochs(run)[0] == "0"


def test_a_budget_spent_inside_the_first_epoch_still_validates_what_was_trained(run):
    settings = overrides(**{"finetune.epochs": 5, "finetune.max_minutes": 0.5 / 60})
    result = finetune(run, settings, progress=False, callbacks=[SlowAfterEpoch(0)])
    assert history_epochs(run) == ["0"] and result.kept in ("finetuned", "head-only")


def with_test_part(folder_data):
    """The folder data as a CSV whose every 4th image is in the data's own test part."""
    rows = ["path,label,split"] + [f"{p.relative_to(folder_data)},{p.parent.name},{'test' if i % 4 == 0 else ''}"
                                   for i, p in enumerate(sorted(folder_data.rglob("*.png")))]
    (folder_data / "list.csv").write_text("\n".join(rows) + "\n")
    return folder_data / "list.csv"


def test_with_a_test_part_the_kept_model_is_chosen_on_validation_never_on_test(folder_data, tiny_config, tmp_path):
    config = tiny_config.updated({"finetune.batch_size": 6, "finetune.num_workers": 0})
    fit(with_test_part(folder_data), tmp_path / "run", config)
    result = finetune(tmp_path / "run", overrides(**{"finetune.lr": 0.001}), progress=False)
    chosen = result.finetuned
    assert result.finetuned["evaluated_on"] == "test"
    assert chosen["choice_basis"] == "validation split (head-only: its out-of-fold predictions)"
    assert result.kept == ("finetuned" if chosen["finetuned_val_S"] > chosen["head_only_val_S"] else "head-only")
    lines = (tmp_path / "run" / "finetune-history.csv").read_text().splitlines()
    history = {int(r["epoch"]): float(r["val_S"]) for r in csv.DictReader(lines)}
    assert chosen["finetuned_val_S"] == pytest.approx(history[chosen["best_epoch"] - 1])


def keep_the_fine_tuned_model(monkeypatch):
    """Whatever the validation split says: these tests are about what keeping it writes."""
    from graft.finetuning import keep as module

    choose = module._validation_choice
    monkeypatch.setattr(module, "_validation_choice", lambda *a: choose(*a) | {"head_only_val_S": -1.0})


def test_with_a_test_part_the_fine_tuned_model_gets_its_own_temperature_from_the_validation_split(
        folder_data, tiny_config, tmp_path, monkeypatch):
    fit(with_test_part(folder_data), tmp_path / "run", tiny_config.updated({"finetune.num_workers": 0}))
    keep_the_fine_tuned_model(monkeypatch)
    result = finetune(tmp_path / "run", overrides(**{"finetune.lr": 0.001}), progress=False)
    assert result.kept == "finetuned"
    tuned = result.finetuned
    assert tuned["calibration"] == "temperature scaling fitted on the validation split (the fine-tuned model never " \
                                   "trained on it)"
    assert tuned["temperature"] > 0 and {"ece_before", "ece_after"} <= set(tuned)
    assert load_run(tmp_path / "run").temperature == pytest.approx(tuned["temperature"], abs=1e-4)
    assert read_results(tmp_path / "run")["temperature"] == tuned["temperature"]


def test_without_a_test_part_the_fine_tuned_model_stays_uncalibrated_and_drops_the_head_only_temperature(
        run, monkeypatch):
    assert "temperature" in read_results(run)  # the head-only model's
    keep_the_fine_tuned_model(monkeypatch)
    result = finetune(run, overrides(**{"finetune.lr": 0.001}), progress=False)
    assert result.kept == "finetuned"
    assert result.finetuned["calibration"].startswith("skipped: without a test part")
    assert "temperature" not in result.finetuned
    assert load_run(run).temperature == 1.0 and "temperature" not in read_results(run)


def test_save_finetuned_writes_the_fine_tuned_models_temperature(run):
    model = load_run(run)
    model.temperature = 1.7
    save_finetuned(RunFiles(run), model, model.config)
    assert load_run(run).temperature == pytest.approx(1.7)


def test_with_a_test_part_fine_tuning_starts_from_a_head_that_never_saw_the_validation_split(folder_data, tiny_config,
                                                                                            tmp_path):
    # the run's head learnt train + validation; fine-tuning validates on validation, so it starts from the same head
    # kind and setting trained on the train split alone
    config = tiny_config.updated({"finetune.batch_size": 6, "finetune.num_workers": 0, "head.kind": "linear"})
    fit(with_test_part(folder_data), tmp_path / "run", config)
    run = load_run(tmp_path / "run")
    train = read_manifest(tmp_path / "run").where("train")
    x, y = labelled_features(train, run.manifest_features(train), run.labels)
    expected, _ = fit_head_of("linear", x, y, len(run.labels), run.config.head, None, tmp_path)
    started = {}

    class Capture(Callback):
        def on_train_start(self, trainer, module):
            started.update({k: v.clone() for k, v in module.head.state_dict().items()})

    result = finetune(tmp_path / "run", overrides(**{"finetune.epochs": 1}), progress=False, callbacks=[Capture()])
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(started[key], value)
    assert not torch.allclose(started["1.weight"], run.head.state_dict()["1.weight"], atol=1e-3)
    assert "train split" in result.finetuned["start_head"]


@pytest.mark.parametrize("test_part", [False, True])
def test_a_bagged_mlp_run_fine_tunes_and_reloads_with_the_head_it_kept(folder_data, tiny_config, tmp_path, monkeypatch,
                                                                       test_part):
    data = with_test_part(folder_data) if test_part else folder_data
    config = tiny_config.updated({"head.kind": "mlp", "finetune.batch_size": 6, "finetune.num_workers": 0})
    fit(data, tmp_path / "run", config)
    assert isinstance(load_run(tmp_path / "run").head, HeadBag)
    keep_the_fine_tuned_model(monkeypatch)
    assert finetune(tmp_path / "run", overrides(), progress=False).kept == "finetuned"
    model = load_run(tmp_path / "run")
    # without a test part it starts from (and fine-tunes) the run's bag; with one, from one head trained on train
    assert isinstance(model.head, HeadBag) != test_part
    assert model.config.head.members == members_of(model.head)
