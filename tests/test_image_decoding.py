"""Image decoding at a cost bounded by the image: resize before padding with LLaVA's exact pixels, size limits.

Runs under both transformers environments (CI's job 2 too): it needs only the processor and PIL.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from processing.processing_sqllava import (
    MAX_IMAGE_ASPECT_RATIO,
    ImageLimitError,
    SQLlavaProcessor,
    _bounded_resize_is_exact,
    check_image_limits,
    pad_to_square_and_resize,
)
from tests.conftest import REPO_ROOT

FILTERS = [
    PIL.Image.Resampling.BICUBIC,
    PIL.Image.Resampling.BILINEAR,
    PIL.Image.Resampling.LANCZOS,
    PIL.Image.Resampling.BOX,
    PIL.Image.Resampling.HAMMING,
]
# Landscape, portrait, near-square, tiny, upscaled and extreme shapes (width, height).
SIZES = [(640, 480), (480, 640), (500, 375), (375, 500), (301, 300), (300, 301), (50, 30), (24, 40), (3, 7),
         (1000, 10), (10, 1000), (2000, 1999), (1, 50)]  # fmt: skip


def expand2square_then_resize(image: PIL.Image.Image, size: int, fill, resample) -> np.ndarray:
    """LLaVA-1.5's `expand2square` (content centred on a square of the mean colour), then PIL's resize."""
    width, height = image.size
    side = max(width, height)
    square = PIL.Image.new("RGB", (side, side), fill)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return np.asarray(square.resize((size, size), resample))


def _random_image(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("resample", FILTERS, ids=lambda f: f.name)
def test_resize_before_padding_gives_the_padded_square_pixels_exactly(resample):
    assert _bounded_resize_is_exact(resample), "the bounded path must be the one in use"
    for width, height in SIZES:
        image = _random_image(width, height, seed=width * 7 + height)
        for size in (336, 17):
            expected = expand2square_then_resize(image, size, (122, 116, 104), resample)
            got = np.asarray(pad_to_square_and_resize(image, size, (122, 116, 104), resample))
            np.testing.assert_array_equal(got, expected, err_msg=f"{width}x{height} -> {size}, {resample.name}")


@pytest.fixture(scope="module")
def processor_336(tiny_tokenizer):
    return SQLlavaProcessor.from_tokenizer(tiny_tokenizer, image_size=336, patch_size=14)


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (500, 375), (336, 336), (1000, 10), (10, 1000), (3, 7)])
def test_processor_pixel_values_equal_the_image_processor_on_the_unpadded_image(processor_336, size):
    """What the processor gives now (resize first) is bit-identical to what the LLaVA image processor gives when it
    pads the whole image to a square first (the previous path), for training (PIL input) and inference (a file)."""
    image = _random_image(*size, seed=1)
    previous = processor_336.image_processor(image, return_tensors="np")["pixel_values"]
    now = processor_336(images=image, return_tensors="np")["pixel_values"]
    assert now.shape == previous.shape == (1, 3, 336, 336)
    np.testing.assert_array_equal(now, previous)


_PEAK_MEMORY_SCRIPT = r"""
import resource, sys, time
import PIL.Image
from recipes.tiny import build_tiny_tokenizer
from processing.processing_sqllava import SQLlavaProcessor
processor = SQLlavaProcessor.from_tokenizer(build_tiny_tokenizer(), image_size=336, patch_size=14)
processor(images=PIL.Image.new("RGB", (64, 48)), return_tensors="np")  # warm up: code paths and allocator
for path in sys.argv[1:]:  # ru_maxrss only grows: the first image's peak bounds what the second may add
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    pixels = processor(images=path, return_tensors="np", max_image_aspect_ratio=None)["pixel_values"]
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(path, pixels.shape == (1, 3, 336, 336), (after - before) * 1024, round(seconds, 3))
"""


def test_hostile_long_pngs_cost_little_memory(tmp_path):
    """PNGs of a few hundred bytes declaring 20000x8 (and 8x20000) pixels: padding to a square first took 5.3 GB for
    20000x8 (4,960 MiB of peak-memory growth measured on the previous code). Resized before padding, the peak growth
    of a fresh process stays a small fraction of the padded square's own 1.2 GB."""
    paths = []
    for size in [(8, 20000), (20000, 8)]:
        paths.append(tmp_path / f"long_{size[0]}x{size[1]}.png")
        PIL.Image.new("RGB", size, (200, 30, 30)).save(paths[-1])
        assert paths[-1].stat().st_size < 2000
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", _PEAK_MEMORY_SCRIPT, *map(str, paths)]
    run = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()[-2:]
    square_bytes = 20000**2 * 3
    for line in lines:
        path, shape_ok, growth, _seconds = line.rsplit(" ", 3)
        assert shape_ok == "True", line
        assert int(growth) < square_bytes / 10, f"{path}: peak grew by {int(growth) / 2**20:.0f} MiB"


def test_size_limits_give_a_clear_error_at_inference(processor_336, tmp_path):
    path = tmp_path / "banner.png"
    PIL.Image.new("RGB", (20000, 8)).save(path)
    with pytest.raises(ImageLimitError, match=r"banner.png.*20000x8 pixels, an aspect ratio of 2500:1.*limit of 100"):
        processor_336(images=str(path), text="<image>\nWhat is it?")
    with pytest.raises(ImageLimitError, match=r"image 0 is 64x48 = 3,072 pixels, over the limit of 1,000"):
        processor_336(images=PIL.Image.new("RGB", (64, 48)), max_image_pixels=1000)
    assert issubclass(ImageLimitError, ValueError)
    check_image_limits(int(MAX_IMAGE_ASPECT_RATIO), 1)  # exactly at the limit is accepted
    with pytest.raises(ImageLimitError, match="at least one pixel"):
        check_image_limits(0, 5)


def test_size_limits_are_honoured_inside_images_kwargs(processor_336):
    # Processor-level options are read at every level `__call__` flattens, as transformers' processors pass them.
    image = PIL.Image.new("RGB", (64, 48))
    with pytest.raises(ImageLimitError, match=r"image 0 is 64x48 = 3,072 pixels, over the limit of 1,000"):
        processor_336(images=image, images_kwargs={"max_image_pixels": 1000})
    with pytest.raises(ImageLimitError, match=r"64x16 pixels, an aspect ratio of 4:1, over the limit of 3:1"):
        processor_336(images=PIL.Image.new("RGB", (64, 16)), images_kwargs={"max_image_aspect_ratio": 3})
    with pytest.raises(ImageLimitError, match=r"over the limit of 1,000"):
        processor_336(images=image, common_kwargs={"max_image_pixels": 1000})
    # A later level wins, as for the other options: the nested None lifts the top-level limit.
    pixels = processor_336(
        images=image, return_tensors="np", max_image_pixels=1000, images_kwargs={"max_image_pixels": None}
    )
    assert pixels["pixel_values"].shape[0] == 1
    assert len(processor_336(images=image, images_kwargs={"max_image_pixels": 3072})["pixel_values"]) == 1
