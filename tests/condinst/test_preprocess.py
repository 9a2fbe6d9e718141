"""Image decoding and resizing under a memory budget: same pixels as the plain PIL path, strip by strip."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from condinst import preprocess
from condinst.errors import UserError
from condinst.preprocess import ImageError, read_image, resize_image, resize_to, to_rgb_uint8


@pytest.fixture
def small_strips(monkeypatch):
    """Strips of 7 rows, so that small test images cross many strip boundaries."""
    monkeypatch.setattr(preprocess, "STRIP_ROWS", 7)


def test_image_error_is_a_user_error():
    assert issubclass(ImageError, UserError) and issubclass(ImageError, ValueError)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(tmp_path, small_strips, orientation):
    a = np.random.default_rng(orientation).integers(0, 255, (23, 31, 3), dtype=np.uint8)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(tmp_path / "o.png", exif=exif)
    with Image.open(tmp_path / "o.png") as ref:
        expected = np.asarray(ImageOps.exif_transpose(ref).convert("RGB"))
    assert np.array_equal(read_image(tmp_path / "o.png"), expected)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_image_size_is_the_size_read_image_returns(tmp_path, orientation, suffix):
    """The one reader of "image size after EXIF" (loader checks, video frames, importers) from the header alone."""
    im = Image.fromarray(np.zeros((23, 31, 3), np.uint8))
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(tmp_path / f"o{suffix}", exif=exif)
    height, width = read_image(tmp_path / f"o{suffix}").shape[:2]
    assert preprocess.image_size(tmp_path / f"o{suffix}") == (width, height)
    with Image.open(tmp_path / f"o{suffix}") as opened:
        assert preprocess.shown_size(opened) == (width, height)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "P", "CMYK", "1", "I;16", "I", "F"])
def test_every_mode_decodes_as_the_whole_image_conversion(tmp_path, small_strips, mode):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=np.uint8))
    if mode == "I;16":
        im = Image.fromarray((rng.integers(0, 65535, (30, 20))).astype(np.uint16))
        expected = np.repeat((np.asarray(im).astype(np.uint16) / 257.0).round().astype(np.uint8)[..., None], 3, 2)
    elif mode in ("I", "F"):
        im = Image.fromarray(rng.integers(-5000, 90000, (30, 20)).astype(np.int32 if mode == "I" else np.float32))
        v = np.asarray(im).astype(np.float64)
        v = (v - v.min()) / (v.max() - v.min())
        expected = np.repeat(np.clip(v * 255, 0, 255).round().astype(np.uint8)[..., None], 3, 2)
    else:
        im = rgb.convert(mode)
        expected = np.asarray(im.convert("RGB")) if mode not in ("RGBA", "LA", "L") else None
        if mode == "L":
            expected = np.repeat(np.asarray(im)[..., None], 3, 2)
        elif mode in ("RGBA", "LA"):  # alpha is dropped, not composited
            expected = np.asarray(im.convert("RGB" if mode == "RGBA" else "L").convert("RGB"))
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I", "F") else "x.png")
    im.save(path)
    out = read_image(path)
    assert out.shape == (30, 20, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.array_equal(out, expected), mode


def test_uint16_rounding_is_exact_for_every_value():
    v = np.arange(65536, dtype=np.uint16)
    assert np.array_equal(to_rgb_uint8(v[None])[0, :, 0], (v / 257.0).round().astype(np.uint8))


def test_float_arrays_use_the_global_maximum(small_strips):
    a = np.zeros((30, 4), np.float32)
    a[-1, -1] = 1.0  # the only value that decides "0..1" lies in the last strip
    a[0, 0] = 0.5
    out = to_rgb_uint8(a)
    assert out[0, 0, 0] == 128 and out[-1, -1, 0] == 255


@pytest.mark.parametrize("shape, size", [((97, 131), (40, 53)), ((40, 53), (97, 131)), ((60, 80), (60, 33)),
                                         ((60, 80), (21, 80)), ((1, 300), (1, 17)), ((300, 1), (17, 1))])
def test_strip_resize_is_bit_identical_to_pil(small_strips, shape, size):
    a = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(a).resize(size[::-1], Image.BILINEAR))
    assert np.array_equal(resize_to(a, *size), expected)


def test_resize_image_keeps_the_detectron2_size():
    a = np.zeros((600, 800, 3), np.uint8)
    assert resize_image(a, 352, 640).shape == (352, 469, 3)
    assert resize_image(a, 600, 1333) is a  # already the right size: no copy


def test_pixel_limit_refuses_before_decoding(tmp_path):
    Image.new("L", (400, 300)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match=r"400x300 image is too large.*downscale it first"):
        read_image(tmp_path / "big.png", max_pixels=100_000)
    assert preprocess.MAX_IMAGE_PIXELS == 120_000_000  # the documented limit


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_decoding_allocates_the_output_and_strips_only(tmp_path, small_strips, mode):
    """Observed: an all-black 11000x9000 PNG took 17.7 GB. Decoding now allocates the (H, W, 3)
    output plus strip-sized temporaries (the plain np.asarray path made 1.7x-2x the output in
    full-size copies); PIL's own buffer is not traced here. bench/memory.py measures 100 MP."""
    import tracemalloc

    Image.new(mode, (2000, 1500), 0).save(tmp_path / "black.png")
    tracemalloc.start()
    try:
        out = read_image(tmp_path / "black.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (1500, 2000, 3) and not out.any()
    assert peak < out.nbytes * 1.1


@pytest.mark.parametrize("resize", ["shortest_edge", "mmcv_rescale"])
def test_an_extreme_aspect_ratio_is_one_error_before_any_resize(resize):
    """Found by tools/hostile_campaign.py: a PNG claiming 1 x 10,000,000 pixels (under the pixel limit)
    resized to 0 x 1333 and PIL raised a ValueError traceback out of `condinst predict`."""
    with pytest.raises(ImageError, match="no pixels: its aspect ratio is too extreme"):
        preprocess.input_resized_shape(10_000_000, 1, resize, 800, 1333)
    assert preprocess.input_resized_shape(600, 800, resize, 800, 1333)[0] >= 1
