"""Safe image decoding: every PIL mode becomes the right RGB pixels, EXIF orientation is applied, and empty,
non-image, truncated, missing and oversized files are refused with one line that names the file."""

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
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])
    assert np.abs(arr[..., 0].astype(int) - cam).mean() < 2  # the photo itself, up to JPEG at quality 95
    sixteen = Image.fromarray(cam.astype(np.uint16) * 257)
    img16 = load_image(_save(sixteen, tmp_path / "camera16.png"))
    assert img16.mode == "RGB"
    np.testing.assert_allclose(np.asarray(img16)[..., 0], cam, atol=1)


def _expected_rgb(src: Image.Image) -> np.ndarray:
    """What each opaque mode means as RGB, read from the pixels by hand (not by PIL's convert)."""
    arr = np.asarray(src)
    if src.mode == "P":
        return np.asarray(src.getpalette(), dtype=np.uint8).reshape(-1, 3)[arr]  # palette lookup
    if src.mode == "1":
        return np.repeat(arr.astype(np.uint8)[..., None] * 255, 3, axis=2)  # black or white
    if src.mode == "LA":
        return np.repeat(arr[..., :1], 3, axis=2)  # alpha is 255 everywhere: the grey level
    return skdata.chelsea()  # RGBA opaque everywhere; CMYK: the photo up to JPEG


@pytest.mark.parametrize("mode", ["CMYK", "P", "1", "LA", "RGBA"])
def test_other_modes_become_rgb(tmp_path, mode):
    src = Image.fromarray(skdata.chelsea()).convert(mode)
    suffix = ".jpg" if mode == "CMYK" else ".png"
    img = load_image(_save(src, tmp_path / f"cat{suffix}"))
    assert img.mode == "RGB" and img.size == src.size
    diff = np.abs(np.asarray(img).astype(int) - _expected_rgb(src).astype(int))
    if mode == "CMYK":
        assert diff.mean() < 5  # lossy, but not inverted (an inverted CMYK read is off by ~100)
    else:
        assert diff.max() == 0


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
    upright = np.asarray(load_image(path)).astype(int)
    assert upright.shape == (451, 300, 3)
    clockwise = np.rot90(skdata.chelsea(), k=-1).astype(int)
    counter_clockwise = np.rot90(skdata.chelsea(), k=1).astype(int)
    # turned clockwise, not the other way: JPEG error is ~3 grey levels, the wrong turn ~35
    assert np.abs(upright - clockwise).mean() < 6 < np.abs(upright - counter_clockwise).mean()


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
    # PIL's own bomb guard (2 x 89 MP) fires on open, before the configured limit is read
    assert msg.startswith(f"{path}: decompression bomb refused (") and "10000000000 pixels" in msg
    assert msg.endswith("raise images.max_pixels") and "\n" not in msg


def test_pixel_limit_is_a_parameter(tmp_path):
    path = _save(skdata.camera(), tmp_path / "camera.png")
    with pytest.raises(ImageDecodeError) as err:
        load_image(path, max_pixels=1000)
    assert str(err.value).startswith(f"{path}: 512x512 = 262144 pixels is over the limit of 1000 ")
    assert load_image(path, max_pixels=512 * 512).size == (512, 512)  # exactly at the limit is allowed


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
    msg = str(err.value)
    assert msg.startswith(f"{path}: {needle}") and "\n" not in msg
    assert err.value.path == str(path)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_image_is_refused(tmp_path, suffix):
    full = _save(skdata.astronaut(), tmp_path / f"full{suffix}")
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ImageDecodeError) as err:
        load_image(cut)
    msg = str(err.value)
    assert msg.startswith(f"{cut}: corrupt or truncated image (") and "\n" not in msg


def test_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError) as err:
        load_image(tmp_path / "nope.jpg")
    assert str(err.value).startswith(f"{tmp_path / 'nope.jpg'}: file not found")
