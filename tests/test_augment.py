import random

import pytest
import torch
from PIL import Image
from torch import nn

from graft.config import AugmentConfig
from graft.features.augment import OneGroupAugment, build_groups, training_transform
from graft.features.backbones import create_backbone


class Spy(nn.Module):
    def __init__(self, name, calls):
        super().__init__()
        self.name, self.calls = name, calls

    def forward(self, image):
        self.calls.append(self.name)
        return image + 1


def spied(p=0.8, n_groups=6, weights=None):
    calls: list[str] = []
    groups = {f"g{i}": Spy(f"g{i}", calls) for i in range(n_groups)}
    return OneGroupAugment(groups, p=p, weights=weights), calls


def test_never_more_than_one_group_per_image():
    random.seed(0)
    augment, calls = spied()
    image = torch.zeros(3, 4, 4)
    for _ in range(2000):
        calls.clear()
        out = augment(image)
        assert len(calls) <= 1
        assert (len(calls) == 1) == (augment.last_group is not None) == bool(out.max() == 1)


def test_augmentation_probability_is_p():
    random.seed(1)
    augment, calls = spied(p=0.8)
    n = 5000
    for _ in range(n):
        augment(torch.zeros(1))
    # binomial sd = 0.0057: p drifting to 0.75 or 0.85 (or applying always) fails
    assert len(calls) / n == pytest.approx(0.8, abs=0.025)
    share = {name: calls.count(name) / len(calls) for name in set(calls)}
    assert len(share) == 6 and all(abs(s - 1 / 6) < 0.03 for s in share.values())


def test_weights_choose_groups():
    random.seed(2)
    augment, calls = spied(p=1.0, n_groups=2, weights=[1.0, 0.0])
    for _ in range(200):
        augment(torch.zeros(1))
    assert set(calls) == {"g0"}


@pytest.mark.parametrize("framing", [{}, {"crop_mode": "squash", "crop_pct": 1.0}, {"crop_mode": "border"}])
def test_p_zero_training_transform_equals_the_eval_transform(framing):
    """Fine-tuning sees images framed as extraction and serving frame them, whatever backbone.crop_mode says."""
    backbone = create_backbone("test_efficientnet", pretrained=False, image_size=48, **framing)
    image = Image.effect_mandelbrot((90, 70), (-2, -1.2, 1, 1.2), 30).convert("RGB")
    plain = training_transform(backbone.data_config, AugmentConfig(p=0.0))(image)
    assert torch.allclose(plain, backbone.transform()(image), atol=1e-6)  # same resize, crop, scale


@pytest.mark.parametrize("name", ["hflip", "rotate", "zoom", "contrast", "brightness", "noise"])
def test_each_default_group_changes_the_image_and_keeps_its_shape(name):
    torch.manual_seed(0)
    image = torch.rand(3, 32, 32)
    out = build_groups(AugmentConfig())[name](image)
    assert out.shape == image.shape and not torch.equal(out, image)
