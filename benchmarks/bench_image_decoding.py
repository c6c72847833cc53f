"""Image preprocessing cost: the LLaVA image processor padding the whole image to a square first (the baseline) next
to `SQLlavaProcessor`, which resizes before padding (`pad_to_square_and_resize`) and gives the same pixels.

Each measurement runs in a fresh process (peak memory is the growth of `ru_maxrss` over a warmed-up process), on a
PNG written here, at 336 px (ViT-L/14-336). Prints the seconds and MiB of both and their ratios, and checks that the
pixel values are identical. The long images are the hostile case: a few hundred bytes of PNG, gigabytes once padded.

    python benchmarks/bench_image_decoding.py                      # ~1 min; the baseline needs ~6 GB for 20000x8
    python benchmarks/bench_image_decoding.py --sizes 4032x3024 640x480
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

_MEASURE = r"""
import hashlib, json, resource, sys, time
import numpy as np
import PIL.Image
from recipes.tiny import build_tiny_tokenizer
from processing.processing_sqllava import SQLlavaProcessor
mode, path = sys.argv[1], sys.argv[2]
processor = SQLlavaProcessor.from_tokenizer(build_tiny_tokenizer(), image_size=336, patch_size=14)
processor(images=PIL.Image.new("RGB", (64, 48)), return_tensors="np")
processor.image_processor(PIL.Image.new("RGB", (64, 48)), return_tensors="np")
image = PIL.Image.open(path).convert("RGB")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if mode == "padded":
    pixels = processor.image_processor(image, return_tensors="np")["pixel_values"]
else:
    pixels = processor(images=image, return_tensors="np", max_image_aspect_ratio=None)["pixel_values"]
seconds = time.perf_counter() - start
growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"seconds": seconds, "mib": growth, "sha": hashlib.sha256(np.ascontiguousarray(pixels)).hexdigest()}))
"""


def measure(mode: str, path: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", _MEASURE, mode, path], check=True, capture_output=True, text=True, env=env
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def _ratio(baseline_mib: float, mib: float) -> str:
    # Below 1 MiB the growth is within what the warmed-up process had already reserved: no meaningful ratio.
    return f"{baseline_mib / mib:.0f}x" if mib >= 1 else "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--sizes", nargs="+", default=["20000x8", "8x20000", "10000x10", "4032x3024", "640x480"])
    args = parser.parse_args(argv)
    import numpy as np
    import PIL.Image

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            width, height = (int(v) for v in size.split("x"))
            path = os.path.join(folder, f"{size}.png")
            if max(width, height) > 10 * min(width, height):  # the hostile case: one colour, a tiny file
                PIL.Image.new("RGB", (width, height), (200, 30, 30)).save(path)
            else:  # photo-sized, random content
                array = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
                PIL.Image.fromarray(array).save(path)
            padded, bounded = measure("padded", path), measure("bounded", path)
            rows.append((size, os.path.getsize(path), padded, bounded))
    print("| image (PNG bytes) | padded first: s / MiB | resized first: s / MiB | time ratio | memory ratio | same pixels |")
    print("|---|---|---|---|---|---|")
    for size, nbytes, padded, bounded in rows:
        print(
            f"| {size} ({nbytes:,}) | {padded['seconds']:.2f} / {padded['mib']:.0f} | {bounded['seconds']:.2f} / "
            f"{bounded['mib']:.0f} | {padded['seconds'] / max(bounded['seconds'], 1e-9):.1f}x | "
            f"{_ratio(padded['mib'], bounded['mib'])} | {padded['sha'] == bounded['sha']} |"
        )


if __name__ == "__main__":
    main()
