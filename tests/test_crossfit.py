"""Cross-fitting (issue 10): folds, out-of-fold predictions, the head families and the choice between them."""

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from torch import nn

from graft.config import HeadConfig
from graft.data.manifest import ImageRecord
from graft.errors import ConfigError
from graft.model.fusion import softmax
from graft.model.head import HeadBag, Standardize, predict_logits
from graft.run import RunFiles, load_run, read_manifest, read_out_of_fold
from graft.tables import head_selection_table
from graft.training import crossfit
from graft.training.choice import robust_choice
from graft.training.crossfit import REPEATS_AUTO, fold_of, repeat_seed, repeats_for
from graft.training.families import Candidate, candidates, fit_head_of, out_of_fold
from graft.training.fit import fit
from graft.training.head_training import training_precision


def records(n_labels: int, observations: int, images: int, seed: int = 0) -> list[ImageRecord]:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_labels * observations) % n_labels)
    return [ImageRecord(Path(f"{o}/{i}.jpg"), f"L{labels[o]}", f"obs{o}", user=f"u{o % 3}")
            for o in range(n_labels * observations) for i in range(images)]


def test_folds_never_cut_an_observation_and_spread_each_label_evenly():
    recs = records(n_labels=4, observations=10, images=3)
    fold = fold_of(recs, 5, seed=0)
    folds_of_observation = defaultdict(set)
    observations_per_label_and_fold = defaultdict(set)
    for record, k in zip(recs, fold, strict=True):
        folds_of_observation[record.observation].add(int(k))
        observations_per_label_and_fold[(record.label, int(k))].add(record.observation)
    assert all(len(found) == 1 for found in folds_of_observation.values())
    assert sorted(np.unique(fold)) == [0, 1, 2, 3, 4]
    assert {len(found) for found in observations_per_label_and_fold.values()} == {2}  # 10 observations / 5 folds
    assert np.array_equal(fold, fold_of(recs, 5, seed=0)) and not np.array_equal(fold, fold_of(recs, 5, seed=1))


def test_one_image_observations_are_folded_stratified_and_seeded():
    recs = records(n_labels=3, observations=10, images=1)  # nothing to group: StratifiedKFold's folds
    fold = fold_of(recs, 5, seed=0)
    per_label_and_fold = Counter((r.label, int(k)) for r, k in zip(recs, fold, strict=True))
    assert set(per_label_and_fold.values()) == {2} and len(per_label_and_fold) == 15  # 10 images / 5 folds each
    assert np.array_equal(fold, fold_of(recs, 5, seed=0)) and not np.array_equal(fold, fold_of(recs, 5, seed=1))


def test_fold_count_shrinks_to_what_the_data_allows():
    assert len(np.unique(fold_of(records(n_labels=2, observations=1, images=4), 5, seed=0))) == 2


@pytest.mark.parametrize("repeats", [1, 2])
def test_out_of_fold_rows_come_from_heads_that_never_saw_their_observation(repeats):
    # features name the observation, labels are random: a head that saw an observation recalls its label,
    # a head that did not can only guess (chance 1/4); repeated, a row's R heads all never saw it
    recs = records(n_labels=4, observations=30, images=3, seed=2)
    signature = np.random.default_rng(3).normal(size=(120, 64)).astype(np.float32)
    x = np.stack([signature[int(r.observation[3:])] for r in recs])
    y = np.array([int(r.label[1:]) for r in recs])
    fold = np.stack([fold_of(recs, 5, seed=repeat_seed(0, r)) for r in range(repeats)])
    config = HeadConfig(c=100.0, width=64, epochs=30, scale=20.0)
    seen, _ = fit_head_of("linear", x, y, 4, config, None, Path("."))
    assert (predict_logits(seen, x).argmax(1) == y).mean() > 0.95
    for family in ([Candidate("linear", 100.0)], [Candidate("prototype", 20.0)], [Candidate("mlp", 30.0)]):
        oof = out_of_fold(family, x, y, fold, 4, config, None, Path("/tmp")).logits[family[0]]
        assert (oof.argmax(1) == y).mean() < 0.5, family


def test_families_that_ship_one_refit_are_cross_fitted_once_and_the_mlp_in_every_repeat(tmp_path):
    x, y, _ = noise_in_three_folds()
    recs = records(n_labels=3, observations=6, images=2)
    folds = np.stack([fold_of(recs, 3, seed=repeat_seed(7, r)) for r in range(3)])
    assert repeat_seed(7, 0) == 7 and len({f.tobytes() for f in folds}) == 3  # each repeat its own folds
    family = [Candidate("linear", 1.0), Candidate("prototype", 20.0)]
    repeated = out_of_fold(family, x, y, folds, 3, HeadConfig(), None, tmp_path).logits
    for candidate in family:  # one refit ships: the first repeat's fold heads predict it, the others would cost 2x more
        once = out_of_fold(family, x, y, folds[0], 3, HeadConfig(), None, tmp_path).logits[candidate]
        assert np.allclose(repeated[candidate], once, atol=1e-6)
    mlp = [Candidate("mlp", 2.0)]
    found = out_of_fold(mlp, x, y, folds, 3, HeadConfig(width=8, epochs=2), None, tmp_path)
    assert len(found.fold_heads[mlp[0]]) == 9  # 3 repeats x 3 folds: the bag it ships
    assert np.allclose(softmax(found.logits[mlp[0]]).sum(1), 1.0, atol=1e-5)  # the log of a mean probability


def test_auto_repeats_cross_fitting_on_few_shot_data_in_memory_only(tmp_path):
    from graft.rows import write_rows

    x = np.zeros((6, 2), np.float32)
    on_disk = write_rows(tmp_path / "x.npy", x)
    threshold = HeadConfig().repeat_below_images_per_class
    assert repeats_for(HeadConfig(), threshold - 1, x) == REPEATS_AUTO == 3
    assert repeats_for(HeadConfig(), threshold, x) == 1
    assert repeats_for(HeadConfig(), threshold - 1, on_disk) == 1  # too large for memory: too large to triple
    assert repeats_for(HeadConfig(repeats=2), 1000, x) == 2
    with pytest.raises(ConfigError, match=r"head\.repeats: 1"):
        repeats_for(HeadConfig(repeats=2), 1000, on_disk)


def noise_in_three_folds() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    recs = records(n_labels=3, observations=6, images=2)
    x = np.random.default_rng(0).normal(size=(len(recs), 8)).astype(np.float32)
    return x, np.array([int(r.label[1:]) for r in recs]), fold_of(recs, 3, seed=0)


def test_mlp_snapshots_equal_separate_runs_of_those_epoch_counts(tmp_path):
    x, y, fold = noise_in_three_folds()
    config = HeadConfig(width=8, epochs=6)
    both = out_of_fold([Candidate("mlp", 3.0), Candidate("mlp", 6.0)], x, y, fold, 3, config, None, tmp_path)
    alone = out_of_fold([Candidate("mlp", 3.0)], x, y, fold, 3, config.model_copy(update={"epochs": 3}), None, tmp_path)
    assert np.allclose(both.logits[Candidate("mlp", 3.0)], alone.logits[Candidate("mlp", 3.0)], atol=1e-5)
    assert not np.allclose(both.logits[Candidate("mlp", 3.0)], both.logits[Candidate("mlp", 6.0)])


def test_auto_precision_multiplies_in_bf16_only_where_the_cpu_does_it_natively(monkeypatch):
    for avx512_bf16, amx, expected in ((False, False, "32-true"), (True, False, "bf16-mixed"), (False, True, "bf16-mixed")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda flag=avx512_bf16: flag)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda flag=amx: flag)
        assert training_precision(HeadConfig()) == expected
        assert training_precision(HeadConfig(precision="32-true")) == "32-true"


def test_bf16_training_reaches_the_fold_heads_and_changes_them_only_a_little(tmp_path):
    x, y, fold = noise_in_three_folds()
    family = [Candidate("mlp", 3.0)]
    logits = [out_of_fold(family, x, y, fold, 3, HeadConfig(width=8, epochs=3, precision=precision), None,
                          tmp_path / precision).logits[family[0]] for precision in ("32-true", "bf16-mixed")]
    assert not np.allclose(logits[0], logits[1], atol=1e-4)  # bf16 matmuls did run
    assert np.corrcoef(logits[0].ravel(), logits[1].ravel())[0, 1] > 0.95


def test_mlp_grid_stops_at_the_first_epoch_count_that_does_not_beat_the_best_before_it(tmp_path):
    x, y, fold = noise_in_three_folds()
    config = HeadConfig(width=8, epochs=4)
    family = [Candidate("mlp", float(e)) for e in (1, 2, 3, 4)]
    scripted = iter([0.5, 0.6, 0.6, 0.9])  # counts 1, 2, 3 (a tie is no gain: stop there), 4 never trained
    found = out_of_fold(family, x, y, fold, 3, config, None, tmp_path / "stop", score=lambda _: {"S": next(scripted)})
    assert list(found.scores) == family[:3]
    assert list(found.logits) == list(found.fold_heads) == [family[1]]  # only the best count's are kept
    assert len(found.fold_heads[family[1]]) == 3
    epochs = {line.split(",")[0] for line in (tmp_path / "stop" / "folds" / "metrics.csv").read_text().splitlines()[1:]}
    assert epochs == {"0", "1", "2"}
    everything = out_of_fold(family, x, y, fold, 3, config, None, tmp_path / "all")  # no score: every count, kept
    assert list(everything.logits) == family
    assert np.allclose(found.logits[family[1]], everything.logits[family[1]], atol=1e-6)


@pytest.mark.parametrize("min_gain, trained", [(0.005, 2), (0.0, 3)])
def test_an_mlp_count_must_beat_the_best_by_more_than_the_grids_min_gain(tmp_path, min_gain, trained):
    x, y, fold = noise_in_three_folds()
    config = HeadConfig(width=8, epochs=3, grid_min_gain=min_gain)
    family = [Candidate("mlp", float(e)) for e in (1, 2, 3)]
    scripted = iter([0.5, 0.504, 0.4])  # +0.004: a tie at min_gain 0.005 (stop, keep the shorter count), else a gain
    found = out_of_fold(family, x, y, fold, 3, config, None, tmp_path, score=lambda _: {"S": next(scripted)})
    assert list(found.scores) == family[:trained]
    assert list(found.logits) == [family[0] if min_gain else family[1]]


def scripted_cross_fit(monkeypatch, scores: list[float], **config) -> crossfit.Selection:
    """cross_fit on noise_in_three_folds' rows, its candidates scored in turn by ``scores`` (the linear head first,
    then the MLP's counts), with a grid of epochs 1, 2, 3; every fold scores alike, so no two S are level."""
    x, y, _ = noise_in_three_folds()
    recs = records(n_labels=3, observations=6, images=2)  # the records those rows belong to
    scripted = iter(scores)

    def scorer(*_):
        def score(_logits):
            s = next(scripted)
            return {"S": s, "top1": 0, "top3": 0, "top5": 0, "fold_S": [s, s, s]}
        return score

    monkeypatch.setattr(crossfit, "out_of_fold_scorer", scorer)
    config = HeadConfig(width=8, epochs=3, epoch_grid=[1, 2, 3], grid_min_gain=0.005, repeats=1, folds=3,
                        c_grid=[1.0], **config)
    return crossfit.cross_fit(x, y, recs, ["L0", "L1", "L2"], config, None, "mean")


def test_an_mlp_count_the_grid_called_a_tie_is_scored_but_never_chosen(monkeypatch):
    """A count that gains less than grid_min_gain has the higher S but no logits: choosing it left none to save."""
    selection = scripted_cross_fit(monkeypatch, [0.5, 0.504, 0.503], kind="mlp")  # +0.004 and +0.003: ties
    assert [row["S"] for row in selection.rows] == [0.5, 0.504, 0.503]  # alone, the MLP leads: ties go on
    assert [row["tie"] for row in selection.rows] == [False, True, True]
    assert "mlp epochs=2 (a tie" in selection.table() and "mlp epochs=3 (a tie" in selection.table()
    assert selection.chosen == Candidate("mlp", 1.0)
    assert selection.logits.shape == (len(selection.fold[0]), 3) and len(selection.fold_heads) == 3


@pytest.mark.parametrize(("linear", "mlp_counts", "chosen"), [
    (0.6, 2, Candidate("linear", 1.0)),  # the MLP trails the linear head: its tie at 2 epochs stops the grid
    (0.45, 3, Candidate("mlp", 3.0)),  # the MLP leads: the tie goes on, and 3 epochs gain
])
def test_a_tie_stops_the_mlp_grid_only_while_the_mlp_trails_the_families_scored_before_it(monkeypatch, linear,
                                                                                           mlp_counts, chosen):
    selection = scripted_cross_fit(monkeypatch, [linear, 0.5, 0.504, 0.6])  # linear, MLP 1, 2, 3
    assert [row["head"] for row in selection.rows][1:] == [f"mlp epochs={e}" for e in range(1, mlp_counts + 1)]
    assert selection.chosen == chosen


def test_an_old_runs_stopped_grid_mark_still_reads_as_a_tie():
    row = {"head": "mlp epochs=10", "S": 0.85, "top1": 0.7, "top5": 1.0, "seconds": 1.0, "stopped_grid": True}
    assert "mlp epochs=10 (a tie" in head_selection_table([row])


def test_the_grids_min_gain_defaults_to_half_a_percent_of_s():
    assert HeadConfig().grid_min_gain == 0.005


def few_shot(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """30 classes x 3 images in 300 dimensions: separable, as leafsnap-dev's ~11 images per class in 1,280."""
    y = np.repeat(np.arange(30), 3)
    return (rng.normal(size=(30, 300))[y] + rng.normal(size=(90, 300))).astype(np.float32), y


def dense(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 3, 90)
    return (rng.normal(size=(3, 12))[y] * 2 + rng.normal(size=(90, 12))).astype(np.float32), y


@pytest.mark.parametrize(("data", "c"), [(dense, 0.5), (few_shot, 1.0)])
def test_linear_head_solves_scikit_learns_logistic_regression_problem(tmp_path, data, c):
    x, y = data(np.random.default_rng(0))
    classes = int(y.max()) + 1
    head, _ = fit_head_of("linear", x, y, classes, HeadConfig(c=c), None, tmp_path)
    with torch.no_grad():
        standardized = head[0](torch.as_tensor(x)).numpy()  # its power normalisation and statistics
    reference = LogisticRegression(C=c, max_iter=10_000, tol=1e-10).fit(standardized, y)  # its exact optimum

    def objective(logits: np.ndarray, weight: np.ndarray) -> float:  # scikit-learn's, divided by C n
        picked = logits[np.arange(len(y)), y] - np.log(np.exp(logits).sum(1))
        return float(-picked.mean() + (weight**2).sum() / (2 * c * len(y)))

    ours = objective(predict_logits(head, x).astype(np.float64), head[1].weight.detach().numpy())
    best = objective(reference.decision_function(standardized), reference.coef_)
    assert best - 1e-6 <= ours <= best + 0.01 * best  # the few-shot head stopped 22% above it before
    assert np.abs(softmax(predict_logits(head, x)) - reference.predict_proba(standardized)).max() < 0.05


def test_class_weighted_linear_head_is_at_its_objectives_minimum(tmp_path):
    """The class-weighted objective's gradient, taken afresh at the fit: zero up to the solver's tolerance (the
    former stopping rule left it far from zero on such few-shot data)."""
    rng = np.random.default_rng(1)
    x, y = few_shot(rng)
    weights = torch.as_tensor(rng.uniform(0.5, 2.0, 30), dtype=torch.float32)
    head, _ = fit_head_of("linear", x, y, 30, HeadConfig(c=1.0), weights, tmp_path)
    with torch.no_grad():
        standardized = head[0](torch.as_tensor(x))
    weight, bias = (p.detach().clone().requires_grad_() for p in (head[1].weight, head[1].bias))
    loss = nn.functional.cross_entropy(standardized @ weight.T + bias, torch.as_tensor(y), weight=weights,
                                       reduction="sum") / len(y) + (weight**2).sum() / (2 * 1.0 * len(y))
    loss.backward()
    assert max(weight.grad.abs().max().item(), bias.grad.abs().max().item()) < 2e-4


def test_prototype_head_scores_cosine_to_class_means(tmp_path):
    x = np.array([[2, 0], [4, 1], [0, 3], [1, 5]], dtype=np.float32)
    y = np.array([0, 0, 1, 1])
    head, _ = fit_head_of("prototype", x, y, 2, HeadConfig(scale=10.0, power=1.0), None, tmp_path)
    query = np.array([[3, 0], [0, 4]], dtype=np.float32)

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    mean, std = x.mean(0), x.std(0, ddof=1)  # the training features' statistics
    prototypes = unit(np.stack([unit((x[y == c] - mean) / std).mean(0) for c in (0, 1)]))
    expected = 10.0 * unit((query - mean) / std) @ prototypes.T
    assert np.allclose(predict_logits(head, query), expected, atol=1e-5)
    assert predict_logits(head, query).argmax(1).tolist() == [0, 1]


def test_standardize_does_not_blow_up_near_constant_dimensions():
    x = torch.randn(200, 16)
    x[:, 0] = 0.5 + 1e-7 * torch.randn(200)  # near-constant on the training images
    layer = Standardize(16).fit(x)
    new = torch.randn(1, 16)
    new[0, 0] = 0.6
    assert layer(new).abs().max() < 1e3  # the old 1e-6 clamp gave ~1e5 here


def test_auto_tries_the_linear_head_and_the_mlp_unless_told_to_skip_the_mlp_on_small_data():
    assert {c.kind for c in candidates(HeadConfig(), images_per_class=5)} == {"linear", "mlp"}
    config = HeadConfig(mlp_min_images_per_class=100)
    few = {c.kind for c in candidates(config, images_per_class=5)}
    many = {c.kind for c in candidates(config, images_per_class=5000)}
    assert few == {"linear"} and many == {"linear", "mlp"}
    assert {c.kind for c in candidates(HeadConfig(kind="prototype"), 5)} == {"prototype"}  # still there when asked
    assert [c.value for c in candidates(config.model_copy(update={"kind": "linear"}), 5)] == config.c_grid
    assert [c.value for c in candidates(HeadConfig(), 5) if c.kind == "mlp"] == [5, 10, 15, 20]  # 40 never mattered


def test_fit_ships_the_robust_choice_and_the_run_rebuilds_that_head(folder_data, tiny_config, tmp_path):
    result = fit(folder_data, tmp_path / "run", tiny_config)
    rows = result.results["head_selection"]
    shippable = [row for row in rows if not row["tie"]]
    shippable = [max((r for r in shippable if r["kind"] == k), key=lambda r: r["S"]) for k in {r["kind"] for r in rows}]
    expected = robust_choice(shippable, tiny_config.head.within_se, tiny_config.head.robustness)
    best = next(i for i, row in enumerate(rows) if row["head"] == expected["head"])
    assert result.results["head"] == rows[best]["kind"]
    assert [row["chosen"] for row in rows] == [i == best for i in range(len(rows))]
    assert f"| {rows[best]['head']} (chosen) |" in RunFiles(tmp_path / "run").results_md.read_text()
    model = load_run(tmp_path / "run")
    assert model.config.head.kind == rows[best]["kind"]  # resolved: never "auto" in a run
    paths, logits = read_out_of_fold(tmp_path / "run")
    assert len(paths) == result.results["n_train_images"] and logits.shape[1] == 3
    assert RunFiles(tmp_path / "run").out_of_fold.is_file()


def test_a_bag_outputs_the_log_of_its_members_mean_probability():
    torch.manual_seed(0)
    members = [torch.nn.Linear(4, 3) for _ in range(3)]
    x = torch.randn(5, 4)
    mean = torch.stack([m(x).softmax(1) for m in members]).mean(0)
    assert torch.allclose(HeadBag(members)(x), mean.log(), atol=1e-6)


def test_a_chosen_mlp_is_its_fold_heads_averaged_and_each_made_its_folds_out_of_fold_rows(
        folder_data, tiny_config, tmp_path):
    from graft.serving.inference import load_engine
    from graft.serving.onnx import export_onnx

    result = fit(folder_data, tmp_path / "run", tiny_config.updated({"head.kind": "mlp", "head.repeats": "auto"}))
    model = load_run(tmp_path / "run")  # rebuilt from config.yaml + head.safetensors
    with np.load(RunFiles(tmp_path / "run").out_of_fold) as saved:
        paths, folds, logits = [Path(p) for p in saved["paths"]], saved["fold"], saved["logits"]
    assert isinstance(model.head, HeadBag)
    repeats, k = len(folds), folds.max() + 1
    assert repeats == result.results["head_repeats"] == model.config.head.repeats == REPEATS_AUTO  # 6 images a class
    assert model.config.head.precision == training_precision(HeadConfig())  # resolved: never "auto" in a run
    assert len(model.head.members) == model.config.head.members == result.results["head_members"] == repeats * k
    features = model.manifest_features(read_manifest(tmp_path / "run")).rows_for(paths)
    made = np.zeros_like(logits)  # no refit: the bag is the heads that never saw their fold, repeat after repeat
    for index, member in enumerate(model.head.members):
        held = folds[index // k] == index % k
        made[held] += softmax(predict_logits(member, features[held])) / repeats
    assert np.allclose(np.log(made), logits, atol=1e-4)
    export_onnx(tmp_path / "run")  # the bag exports and serves like any head
    images = [Image.open(p).convert("RGB") for p in paths[:3]]
    assert np.abs(load_engine(tmp_path / "run", "torch").probabilities(images, [""] * 3)
                  - load_engine(tmp_path / "run").probabilities(images, [""] * 3)).max() < 1e-4


@pytest.mark.parametrize("setting", [{"head.bag": False}, {"head.selection": "holdout"}])
def test_with_bag_off_a_chosen_mlp_is_one_head_refit_on_everything(folder_data, tiny_config, tmp_path, setting):
    reused = {"head.kind": "mlp", "head.members": 4} | setting  # members as a previous run's config.yaml wrote them
    fit(folder_data, tmp_path / "run", tiny_config.updated(reused))
    model = load_run(tmp_path / "run")
    assert isinstance(model.head, torch.nn.Sequential) and model.config.head.members == 1


def test_calibration_comes_from_out_of_fold_predictions_even_with_a_test_part(folder_data, tiny_config, tmp_path):
    rows = ["path,label,split"] + [f"{p.relative_to(folder_data)},{p.parent.name},{'test' if i % 4 == 0 else ''}"
                                   for i, p in enumerate(sorted(folder_data.rglob("*.png")))]
    (folder_data / "list.csv").write_text("\n".join(rows) + "\n")
    result = fit(folder_data / "list.csv", tmp_path / "run", tiny_config)
    assert result.results["evaluated_on"] == "test"
    assert result.results["calibration"] == "temperature scaling fitted on out-of-fold predictions"
    assert load_run(tmp_path / "run").temperature == pytest.approx(result.results["temperature"], abs=1e-4)
    assert result.results["n_train_images"] == 18  # train and validation images both teach the head


def test_fusion_auto_takes_the_best_out_of_fold_rule_only_when_it_clearly_beats_mean():
    from graft.training.fit import chosen_fusion

    rows = {"mean": {"S": 0.50}, "max": {"S": 0.505}, "geometric": {"S": 0.52}, "borda": {"S": 0.515}}
    assert chosen_fusion(rows) == "geometric"
    assert chosen_fusion(rows | {"geometric": {"S": 0.509}, "borda": {"S": 0.50}}) == "mean"  # +0.009 < 0.01


def test_fit_with_fusion_auto_keeps_a_concrete_rule_chosen_out_of_fold(folder_data, tiny_config, tmp_path):
    from graft.training.fit import chosen_fusion

    config = tiny_config.updated({"predict.fusion": "auto"})
    result = fit(folder_data, tmp_path / "run", config)
    rule = load_run(tmp_path / "run").config.predict.fusion
    assert rule == result.results["fusion"] == chosen_fusion(result.results["fusion_rules_out_of_fold"])


def test_out_of_fold_rows_are_named_by_the_manifests_absolute_paths_whatever_path_fit_was_given(
        folder_data, tiny_config, tmp_path, monkeypatch):
    monkeypatch.chdir(folder_data.parent)
    fit(folder_data.name, tmp_path / "run", tiny_config)  # a relative data path, as typed on a command line
    paths, _ = read_out_of_fold(tmp_path / "run")
    manifest = {r.path for r in read_manifest(tmp_path / "run")}
    assert all(p.is_absolute() for p in paths) and set(paths) <= manifest
