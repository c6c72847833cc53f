"""Build the warm tiny towers of the embedded default once and write them to `recipes/tiny_towers/`.

`python -m recipes.run_tiny` needs two "pretrained" towers (a CLIP vision tower and a Llama, each warmed up on the
training split of the synthetic shapes data, see `recipes/run_tiny.py`). Building them takes 800 warm-up steps each,
about a minute on 2 idle CPU cores and far longer on a busy machine, at every run. This script builds them with the
same code for the default data and settings and saves them with the manifest `run_tiny` compares against: when the
manifest matches (same seed, steps, image size, tokenizer and training data), `run_tiny` copies them instead of
building. Rerun it after changing the generator, the tokenizer or the tower code (the manifest then no longer
matches, and `run_tiny` says so and builds them itself).

```bash
python -m recipes.build_tiny_towers                 # rewrites recipes/tiny_towers/ (about 1.5 MB)
python -m recipes.build_tiny_towers --output /tmp/towers
```
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recipes.run_tiny import (
    SHAPES_IMAGE_SIZE,
    SHIPPED_TOWERS_DIR,
    TOWERS_MANIFEST,
    build_tiny_towers,
    towers_manifest,
    use_one_thread,
)

logger = logging.getLogger("sqllava.build_tiny_towers")
# The files `run_tiny` needs from each tower folder (the rest of what `save_pretrained` writes is regenerated).
_KEEP = ("config.json", "model.safetensors", "preprocessor_config.json", "generation_config.json",
         "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")  # fmt: skip


def to_portable_clip_layout(path: str) -> None:
    """Rewrite a `CLIPVisionModel` checkpoint with the `vision_model.` key prefix, if it lacks it.

    transformers 5.x saves `CLIPVisionModel` without that level and 4.57 cannot load such a file (it initialises
    every weight at random, with only a warning); the prefixed layout, the one of the CLIP checkpoints on the Hub,
    loads without missing or unexpected keys in both.
    """
    from safetensors.torch import load_file, save_file

    state_dict = load_file(path)
    if all(key.startswith("vision_model.") for key in state_dict):
        return
    save_file({f"vision_model.{key}": value for key, value in state_dict.items()}, path, metadata={"format": "pt"})


def write_towers(output_dir: str, *, num_train: int, seed: int, lm_steps: int, num_eval: int = 100) -> dict:
    """Generate the shapes data in a temporary folder, build both towers on it, and write them + the manifest."""
    from recipes.synthetic import generate_shapes_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = generate_shapes_dataset(
            os.path.join(tmp, "shapes"), num_train=num_train, num_eval=num_eval, seed=seed, image_size=SHAPES_IMAGE_SIZE
        )
        start = time.perf_counter()
        built = build_tiny_towers(os.path.join(tmp, "towers"), data, seed=seed, lm_steps=lm_steps)
        seconds = time.perf_counter() - start
        manifest = {"towers": towers_manifest(data, seed=seed, lm_steps=lm_steps), "num_train": num_train}
        os.makedirs(output_dir, exist_ok=True)
        for folder in (os.path.basename(built["vision"]), os.path.basename(built["text"])):
            source, target = os.path.join(tmp, "towers", folder), os.path.join(output_dir, folder)
            shutil.rmtree(target, ignore_errors=True)
            os.makedirs(target)
            for name in sorted(os.listdir(source)):
                if name in _KEEP:
                    shutil.copy2(os.path.join(source, name), os.path.join(target, name))
        to_portable_clip_layout(os.path.join(output_dir, os.path.basename(built["vision"]), "model.safetensors"))
    with open(os.path.join(output_dir, TOWERS_MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    logger.info("Wrote the towers to %s (built in %.0f s).", output_dir, seconds)
    return manifest


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--output", default=SHIPPED_TOWERS_DIR, help="folder to write (default: the shipped one)")
    # The defaults of `python -m recipes.run_tiny`: the towers are only used by a run with the same values.
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--lm-steps", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    use_one_thread()
    return write_towers(args.output, num_train=args.num_train, seed=args.seed, lm_steps=args.lm_steps)


if __name__ == "__main__":
    main()
