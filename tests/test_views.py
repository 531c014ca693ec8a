import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import make_image
from graft.config import FeatureConfig, ViewsConfig
from graft.features.backbones import create_backbone
from graft.features.extract import extract_features
from graft.views.preprocess import Decision, apply, decide, params_key, preprocess

ON = ViewsConfig(enabled=True)


def disc_image(box=(180, 60, 260, 140), size=(300, 200)) -> Image.Image:
    image = Image.new("RGB", size, (230, 228, 220))
    ImageDraw.Draw(image).ellipse(box, fill=(30, 70, 25))
    return image


@pytest.mark.parametrize("view", ["Flower", "Fruit", "Leaf"])
def test_dark_disc_on_light_background_is_boxed(view):
    decision = decide(disc_image(), view, ON)
    assert decision.kind == "crop" and not decision.fallback
    left, top, right, bottom = decision.box
    assert left <= 180 and top <= 60 and right >= 260 and bottom >= 140  # the whole disc is inside
    assert (right - left) * (bottom - top) < 0.3 * 300 * 200  # and the background is mostly cut away


def test_stem_cuts_a_fifth_from_every_side_first():
    decision = decide(disc_image(box=(200, 70, 280, 130)), "Stem", ON)  # straddles the cut at x = 240
    assert not decision.fallback
    left, top, right, bottom = decision.box
    assert 60 <= left <= 200 and right <= 240 and top >= 40 and bottom <= 160  # never outside the central 3/5


def test_box_is_squared_around_a_thin_subject_so_the_centre_crop_keeps_it():
    decision = decide(disc_image(box=(140, 20, 160, 180)), "Flower", ON)  # tall and thin
    left, top, right, bottom = decision.box
    assert abs((right - left) - (bottom - top)) <= 2 and left <= 140 and right >= 160
    unsquared = decide(disc_image(box=(140, 20, 160, 180)), "Flower", ON.model_copy(update={"square": False}))
    assert unsquared.box[2] - unsquared.box[0] < 40


def test_blank_image_falls_back_to_uncropped():
    blank = Image.new("RGB", (120, 90), (128, 128, 128))
    image, decision = preprocess(blank, "Flower", ON)
    assert decision.fallback and image.size == blank.size


def test_tiny_box_falls_back():
    decision = decide(disc_image(box=(148, 98, 151, 101)), "Flower", ON.model_copy(update={"min_box_fraction": 0.05}))
    assert decision.fallback in ("tiny", "empty", "not_converged", "flat")


def test_leafscan_whitens_the_background_and_keeps_the_leaf():
    image = disc_image()
    image.paste((200, 198, 190), (0, 0, 40, 200))  # uneven light background
    result = np.asarray(preprocess(image, "LeafScan", ON)[0])
    assert (result[5, 5] == 255).all() and (result[100, 20] == 255).all()
    assert tuple(result[100, 220]) == (30, 70, 25)


def test_entire_branch_unknown_and_disabled_are_unchanged():
    image = disc_image()
    for view, config in [("Entire", ON), ("Branch", ON), ("", ON), ("Mystery", ON), ("Flower", ViewsConfig()),
                         ("Flower", ON.model_copy(update={"off": ["flower"]}))]:
        assert decide(image, view, config) == Decision() and params_key(view, config) == ""
        assert apply(image, decide(image, view, config)) is image


def test_parameters_change_the_key():
    assert params_key("Flower", ON) != params_key("Flower", ON.model_copy(update={"flower_fruit_sigma": 3.0}))
    assert params_key("Flower", ON) == params_key("Fruit", ON)
    assert params_key("Leaf", ON) != params_key("Flower", ON)


def test_decision_round_trips_through_a_cache_row():
    decision = Decision("crop", (1, 2, 30, 40), 0.0, True, "")
    assert Decision.from_row(decision.to_row()) == decision


def test_preprocessing_never_mixes_features_and_decisions_are_cached(tmp_path, monkeypatch):
    paths = [make_image(tmp_path / f"{i}.png", (40, 90, 40), i, size=48) for i in range(4)]
    backbone = create_backbone("test_efficientnet", pretrained=False, image_size=32)

    settings = FeatureConfig(cache_dir=str(tmp_path / "cache"), batch_size=4, num_workers=0)

    def run(config):
        return extract_features(paths, backbone, settings, views=["Flower"] * 4, view_config=config)

    plain = run(ViewsConfig())
    cropped = run(ON)
    assert cropped.extracted == 4  # turning preprocessing on never reads the plain features
    assert run(ViewsConfig()).extracted == 0 and run(ON).extracted == 0
    calls = []
    import graft.features.preparation

    monkeypatch.setattr(graft.features.preparation, "decide", lambda *a: calls.append(a) or Decision())
    other = create_backbone("test_efficientnet", pretrained=False, image_size=40)
    extract_features(paths, other, settings, views=["Flower"] * 4, view_config=ON)
    assert calls == []  # a new backbone reuses the cached crop decisions
    assert not np.array_equal(plain.features, cropped.features)
