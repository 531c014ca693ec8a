import numpy as np
import pytest
import torch
from torch import nn

from graft.config import HeadConfig
from graft.model.head import FastDropout, Standardize, build_head
from graft.training.head_training import class_weights, fit_head


def blobs(n, seed, classes=3, dim=16):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = np.random.default_rng(0).normal(size=(classes, dim)) * 3
    return (centres[y] + rng.normal(size=(n, dim))).astype(np.float32), y


def test_default_head_is_the_seeds():
    head = build_head(1280, 500, HeadConfig())
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1280, 512), (512, 512), (512, 512), (512, 500)]
    assert sum(isinstance(m, nn.SELU) for m in head) == 3
    assert [m.p for m in head if isinstance(m, nn.Dropout)] == [0.5, 0.5, 0.5]
    assert isinstance(head[0], Standardize)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # bf16: the MLP's activations in training
@pytest.mark.parametrize("p", [0.5, 0.2])
def test_dropout_zeroes_units_with_probability_p_scales_the_rest_and_is_off_in_eval(p, dtype):
    torch.manual_seed(0)
    x = (torch.rand(400, 500) + 0.5).to(dtype)  # no zeros of its own
    dropout = FastDropout(p).train()
    y = dropout(x)
    assert y.dtype == dtype
    assert (y == 0).float().mean().item() == pytest.approx(p, abs=0.01)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / (1 - p))  # the expected activation is unchanged
    assert torch.equal(dropout.eval()(x), x)


def test_class_weights_are_inverse_frequency():
    weights = class_weights(np.array([0, 0, 0, 1]), 3)
    assert weights.tolist() == pytest.approx([4 / 6, 2.0, 0.0])


def test_head_learns_and_keeps_best_validation_weights(tmp_path):
    train, val = blobs(200, 1), blobs(60, 2)
    config = HeadConfig(epochs=8, width=32, patience=3, min_epochs=1, precision="32-true")  # logged in float32 too
    fit = fit_head(train, val, 3, config, tmp_path)
    with torch.no_grad():
        logits = fit.head(torch.tensor(val[0]))
    assert (logits.argmax(1).numpy() == val[1]).mean() > 0.9
    loss = nn.functional.cross_entropy(logits, torch.tensor(val[1])).item()
    rows = [line.split(",") for line in fit.metrics_csv.read_text().splitlines()]
    column = rows[0].index("val_loss")
    val_losses = [float(r[column]) for r in rows[1:] if r[column]]
    assert loss == pytest.approx(min(val_losses), rel=1e-4)  # the restored weights are the best epoch's


def test_early_stopping_stops(tmp_path):
    train = blobs(100, 1)
    val = (blobs(40, 3)[0], np.random.default_rng(5).integers(0, 3, 40))  # unlearnable: val loss rises
    fit = fit_head(train, val, 3, HeadConfig(epochs=200, width=16, patience=2, min_epochs=1), tmp_path)
    assert fit.epochs_run < 200


def test_refit_trains_on_train_and_val_for_at_least_min_epochs(tmp_path):
    train, val = blobs(60, 1), blobs(30, 2)
    fit = fit_head(train, val, 3, HeadConfig(epochs=3, width=16, min_epochs=4), tmp_path, refit=True)
    assert fit.refit_epochs == 4
    refit_log = (tmp_path / "head-refit" / "metrics.csv").read_text().splitlines()
    assert len({line.split(",")[0] for line in refit_log[1:]}) == 4


def test_features_are_power_normalised_before_standardisation_by_default():
    assert HeadConfig().power == 0.5
    x = torch.tensor([[0.0, 4.0], [1.0, -9.0], [9.0, 1.0]])
    layer = build_head(2, 3, HeadConfig(kind="linear"))[0].fit(x)
    root = x.sign() * x.abs().sqrt()  # signed square root
    assert torch.allclose(layer.mean, root.mean(0)) and torch.allclose(layer.std, root.std(0))
    assert torch.allclose(layer(x), (root - root.mean(0)) / root.std(0))
    assert torch.equal(Standardize(2, 1.0).normalise(x), x)  # power 1 leaves the features as they are


def test_power_normalisation_keeps_a_finite_gradient_at_zero():
    x = torch.tensor([0.0, 1e-12, 0.25], requires_grad=True)  # fine-tuning back-propagates through it
    Standardize(3, 0.5).normalise(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[2] == pytest.approx(1.0)


def test_a_head_says_its_power_and_one_saved_before_power_normalisation_loads_without_it():
    x = torch.rand(3, 4)
    old = build_head(4, 2, HeadConfig(kind="linear", power=1.0))
    old[0].fit(torch.rand(10, 4))
    state = {k: v for k, v in old.state_dict().items() if not k.endswith("power")}  # as graft wrote heads before
    loaded = build_head(4, 2, HeadConfig(kind="linear"))  # today's default config says 0.5
    loaded.load_state_dict(state)
    assert loaded[0].exponent == 1.0 and torch.allclose(loaded(x), old(x))
    rooted = build_head(4, 2, HeadConfig(kind="linear", power=0.5))
    again = build_head(4, 2, HeadConfig(kind="linear", power=1.0))
    again.load_state_dict(rooted.state_dict())  # the saved buffer, not the config, says what the head was trained with
    assert again[0].exponent == 0.5 and torch.allclose(again(x), rooted(x))


@pytest.mark.parametrize("setting", [
    {"kind": "linear"}, {"kind": "linear", "power": 1.0}, {"kind": "prototype", "scale": 12.0},
    {"kind": "mlp"}, {"kind": "mlp", "activation": "relu", "hidden_layers": 2}, {"kind": "mlp", "activation": "silu"},
    {"kind": "mlp", "members": 3}])
def test_the_numpy_head_gives_the_torch_heads_logits(tmp_path, setting):
    # a run served without torch (its backbone's cached graph + this head) must answer as the run itself does
    from safetensors.torch import save_file

    from graft.model.head import predict_logits
    from graft.model.numpy_head import load_numpy_head

    config = HeadConfig(width=24).model_copy(update=setting)
    torch.manual_seed(0)
    head = build_head(16, 5, config)
    x, _ = blobs(40, seed=1, dim=16)
    x[:, :4] = np.abs(x[:, :4]) * (np.arange(40) % 3 == 0)[:, None]  # exact zeros, as pooled ReLU features have
    for module in head.modules():  # statistics and prototypes that are not the defaults
        if isinstance(module, Standardize):
            module.fit(torch.as_tensor(x))
        if hasattr(module, "prototypes"):
            module.prototypes.normal_()
    save_file(head.state_dict(), tmp_path / "head.safetensors")
    numpy_head = load_numpy_head(tmp_path / "head.safetensors", config)
    assert np.allclose(numpy_head(x), predict_logits(head, x), rtol=1e-5, atol=1e-5)


def test_a_head_numpy_cannot_run_is_left_to_torch(tmp_path):
    from safetensors.torch import save_file

    from graft.model.numpy_head import load_numpy_head

    config = HeadConfig(width=8, activation="gelu")
    save_file(build_head(4, 2, config).state_dict(), tmp_path / "head.safetensors")
    assert load_numpy_head(tmp_path / "head.safetensors", config) is None


def test_the_genus_prior_ranks_a_species_of_a_likely_genus_higher():
    from graft.model.head import GenusPrior
    from graft.model.numpy_head import genus_matrix, genus_prior

    genera = ["Acer", "Acer", "Quercus", "Tilia"]
    matrix = genus_matrix(genera)
    assert matrix.shape == (4, 3) and np.allclose(matrix.sum(0), 1.0)  # each genus's mean over its species
    probabilities = np.array([[0.40, 0.15, 0.20, 0.25]], np.float32)  # the head: Acer 1, Tilia, Quercus, Acer 2
    logits = np.log(probabilities)
    scores = genus_prior(logits, matrix, 1.0)  # p(s) x its genus's mean: Acer 0.275, Quercus 0.20, Tilia 0.25
    assert list(np.argsort(-scores[0])) == [0, 3, 1, 2]  # Acer 2 (0.15 x 0.275) climbs past Quercus (0.20 x 0.20)
    assert np.allclose(scores, GenusPrior(torch.from_numpy(matrix), 1.0)(torch.from_numpy(logits)).numpy(), atol=1e-6)
    unchanged = genus_prior(logits, matrix, 0.0)
    assert np.allclose(np.exp(unchanged), probabilities, atol=1e-6)  # weight 0: the head's own ranking
    assert genus_matrix(["Acer", "Quercus", ""]) is None  # no genus holds two species: nothing to prefer


def test_a_head_with_a_genus_prior_is_saved_rebuilt_and_run_in_numpy(tmp_path):
    from safetensors.torch import load_file, save_file

    from graft.model.head import PriorHead, predict_logits, rebuild_head, with_genus_prior
    from graft.model.numpy_head import load_numpy_head

    for setting in ({"kind": "linear"}, {"kind": "mlp", "members": 3}):
        config = HeadConfig(width=24).model_copy(update=setting)
        torch.manual_seed(0)
        head = with_genus_prior(build_head(16, 4, config), ["Acer", "Acer", "Quercus", "Tilia"], 1.0)
        assert isinstance(head, PriorHead)
        x, _ = blobs(20, seed=2, dim=16)
        save_file(head.state_dict(), tmp_path / "head.safetensors")
        rebuilt = rebuild_head(16, 4, config, load_file(tmp_path / "head.safetensors"))
        assert isinstance(rebuilt, PriorHead) and np.allclose(predict_logits(rebuilt, x), predict_logits(head, x))
        numpy_head = load_numpy_head(tmp_path / "head.safetensors", config)
        assert np.allclose(numpy_head(x), predict_logits(head, x), rtol=1e-5, atol=1e-5)
    plain = build_head(16, 4, HeadConfig(kind="linear"))
    assert with_genus_prior(plain, ["A", "B", "C", "D"], 1.0) is plain  # nothing shared: the head as it was
    assert with_genus_prior(plain, ["A", "A", "C", "D"], 0.0) is plain  # switched off
