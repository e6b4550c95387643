import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from image_emotion.data.images import load_image
from image_emotion.errors import ImageDecodeError


def _save(arr_or_img, path: Path, **kw) -> Path:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    img.save(path, **kw)
    return path


def test_real_rgb_photo_roundtrips(tmp_path):
    photo = skdata.astronaut()  # (512, 512, 3) uint8
    img = load_image(_save(photo, tmp_path / "astronaut.png"))
    assert img.mode == "RGB" and img.size == (512, 512)
    np.testing.assert_array_equal(np.asarray(img), photo)


def test_real_grayscale_and_16bit_become_rgb(tmp_path):
    cam = skdata.camera()  # (512, 512) uint8
    img = load_image(_save(cam, tmp_path / "camera.jpg", quality=95))
    assert img.mode == "RGB"
    arr = np.asarray(img)
    assert np.array_equal(arr[..., 0], arr[..., 1])
    sixteen = Image.fromarray(cam.astype(np.uint16) * 257)
    img16 = load_image(_save(sixteen, tmp_path / "camera16.png"))
    assert img16.mode == "RGB"
    np.testing.assert_allclose(np.asarray(img16)[..., 0], cam, atol=1)


@pytest.mark.parametrize("mode", ["CMYK", "P", "1", "LA", "RGBA"])
def test_other_modes_become_rgb(tmp_path, mode):
    src = Image.fromarray(skdata.chelsea()).convert(mode)
    suffix = ".jpg" if mode == "CMYK" else ".png"
    img = load_image(_save(src, tmp_path / f"cat{suffix}"))
    assert img.mode == "RGB" and img.size == src.size


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:4, :, :] = (255, 0, 0, 255)  # opaque red top half, transparent bottom half
    arr = np.asarray(load_image(_save(rgba, tmp_path / "alpha.png")))
    assert tuple(arr[0, 0]) == (255, 0, 0) and tuple(arr[7, 7]) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    photo = Image.fromarray(skdata.chelsea())  # 451 wide, 300 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    photo.save(path, exif=exif.tobytes())
    assert load_image(path).size == (300, 451)


def _patch_png_size(path: Path, width: int, height: int) -> None:
    """Rewrite the IHDR of a PNG to claim another size (with a valid CRC): a decompression-bomb header."""
    raw = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length+type of IHDR
    raw[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(raw[12 : ihdr + 13])) & 0xFFFFFFFF
    raw[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(raw))


def test_decompression_bomb_is_refused_naming_the_file(tmp_path):
    path = _save(np.zeros((4, 4), dtype=np.uint8), tmp_path / "bomb.png")
    _patch_png_size(path, 100_000, 100_000)
    with pytest.raises(ImageDecodeError) as err:
        load_image(path)
    msg = str(err.value)
    assert str(path) in msg and "pixels" in msg and "max_pixels" in msg and "\n" not in msg


def test_pixel_limit_is_a_parameter(tmp_path):
    path = _save(skdata.camera(), tmp_path / "camera.png")
    with pytest.raises(ImageDecodeError, match="over the limit of 1000"):
        load_image(path, max_pixels=1000)


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("empty.jpg", b"", "empty file"),
        ("notes.jpg", b"this is a text file, not a JPEG\n" * 10, "not an image"),
    ],
)
def test_bad_files_get_one_line_errors(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError) as err:
        load_image(path)
    assert str(path) in str(err.value) and needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_image_is_refused(tmp_path, suffix):
    full = _save(skdata.astronaut(), tmp_path / f"full{suffix}")
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(cut)


def test_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="file not found"):
        load_image(tmp_path / "nope.jpg")
