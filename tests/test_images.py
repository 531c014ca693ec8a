import io

import numpy as np
import pytest
from PIL import Image

from graft.data.images import load_rgb
from graft.errors import ImageError


def save(tmp_path, image: Image.Image, name: str, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGB", "LA"])
def test_every_common_mode_becomes_rgb(tmp_path, mode):
    image = Image.new("RGB", (10, 6), (120, 30, 200)).convert(mode)
    suffix = "jpg" if mode == "CMYK" else "png"
    result = load_rgb(save(tmp_path, image, f"x.{suffix}"))
    assert result.mode == "RGB" and result.size == (10, 6)


def test_rgba_is_composited_on_white(tmp_path):
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_rgb(save(tmp_path, image, "a.png")).getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_is_scaled_not_clipped(tmp_path):
    array = np.full((4, 4), 65535 // 2, dtype=np.uint16)
    image = Image.fromarray(array)
    assert image.mode.startswith("I;16")
    pixel = load_rgb(save(tmp_path, image, "deep.png")).getpixel((0, 0))
    assert pixel[0] == pytest.approx(127, abs=1)


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = save(tmp_path, image, "rotated.jpg", exif=exif.tobytes())
    assert load_rgb(path).size == (10, 20)


def test_zero_byte_file_names_the_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg: empty file"):
        load_rgb(path)


def test_non_image_and_missing_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(ImageError, match="not a readable image"):
        load_rgb(path)
    with pytest.raises(ImageError, match="not found"):
        load_rgb(tmp_path / "absent.png")


def test_truncated_jpeg_is_an_image_error(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[:200])
    with pytest.raises(ImageError):
        load_rgb(path)


@pytest.mark.parametrize("side", [11_500, 16_000])  # 132 MP: past graft's limit; 256 MP: past PIL's own error
def test_decompression_bombs_are_refused_from_the_header_with_the_fix(tmp_path, side):
    from conftest import png_header_only
    from graft.data.images import MAX_PIXELS
    from graft.errors import ImageTooLarge

    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(side, side))
    assert side * side > MAX_PIXELS
    with pytest.raises(ImageTooLarge, match=r"bomb\.png: .*replace or remove"):
        load_rgb(path)


def test_a_bomb_among_good_images_is_skipped_and_listed(tmp_path):
    from conftest import make_image, png_header_only
    from graft.config import FeatureConfig
    from graft.features.backbones import create_backbone
    from graft.features.extract import extract_features

    good = [make_image(tmp_path / f"{i}.png", (10, 200, 30), i) for i in range(3)]
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(16_000, 16_000))
    result = extract_features([*good, bomb], create_backbone("test_efficientnet", pretrained=False, image_size=32),
                              FeatureConfig(cache_dir=str(tmp_path / "cache"), num_workers=0))
    assert result.paths == good and "pixels" in result.failures[bomb]


def test_a_large_jpeg_is_decoded_only_down_to_the_side_the_backbone_needs(tmp_path):
    rng = np.random.default_rng(0)
    pixels = np.clip(rng.normal(120, 40, (1500, 2000, 3)), 0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated: 1500 wide, 2000 high
    Image.fromarray(pixels).save(tmp_path / "big.jpg", quality=90, exif=exif.tobytes())
    reduced = load_rgb(tmp_path / "big.jpg", min_side=256)
    assert reduced.size == (375, 500)  # 1/4 scale: the smallest that keeps both sides >= 256, still upright
    assert load_rgb(tmp_path / "big.jpg").size == (1500, 2000)
    assert load_rgb(tmp_path / "big.jpg", min_side=600).size == (750, 1000)  # 1/2 scale
    Image.fromarray(pixels).save(tmp_path / "big.png")
    assert load_rgb(tmp_path / "big.png", min_side=256).size == (2000, 1500)  # only JPEG has DCT scaling
