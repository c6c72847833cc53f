"""The embedded default: the whole SQ-LLaVA pipeline, offline, on a CPU, in minutes.

1. generates the synthetic shapes dataset (LLaVA JSON + image folder, `recipes/synthetic.py`);
2. takes two small "pretrained" towers, saved like Hub checkpoints: a CLIP vision tower warmed up to recognise the
   words of the training captions in its images (the stand-in for CLIP's image-text pretraining: a random tower's
   layer -2 features barely beat the base rate of a linear probe for "is there a red object"), and a small Llama whose
   language modelling is warmed up on the training text (the stand-in for Vicuna being a pretrained LM). With the
   default data and settings they are the ones shipped in `recipes/tiny_towers/` (written by
   `python -m recipes.build_tiny_towers`, the same code as here); otherwise they are built on the fly;
3. stage 1 (`recipes/pretrain.py`, `recipes/configs/tiny/pretrain.yaml`): alignment on captions;
4. stage 2 (`recipes/finetune.py`, `recipes/configs/tiny/finetune.yaml`): self-questioning instruction tuning with
   LLM-LoRA + ViT-LoRA, then export of a merged, verified, Hub-ready folder;
5. loads that folder back with `AutoModelForImageTextToText.from_pretrained(..., trust_remote_code=True)`, measures
   held-out answer accuracy against chance, and shows an answer and self-generated questions for a held-out image.

```bash
python -m recipes.run_tiny                      # everything under ./outputs/tiny and ./data/shapes
python -m recipes.run_tiny --workdir /tmp/tiny  # elsewhere
```

Every process runs torch on one intra-op thread, and stage 2 (most of the time) runs as two processes where there
are two cores (DDP over gloo, `--processes`). The models are tiny, so a second intra-op thread buys little when the
machine is idle, and on a busy machine (more runnable threads than cores) the OpenMP threads of each of the thousands
of ops per step wait for each other to be scheduled: the run slowed down 24x under load average 5-10 instead of in
proportion to its CPU share (40 training steps: 206 s with two threads, 30 s with one, same load). Two processes
synchronise once per step (the gradient all-reduce), not once per op, so they use both cores and still degrade in
proportion (measurements: benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

logger = logging.getLogger("sqllava.run_tiny")
RECIPES_DIR = os.path.dirname(os.path.abspath(__file__))
_REPO_ROOT = os.path.dirname(RECIPES_DIR)
# The shapes sit on a 3x3 grid: 84 px images with 28 px patches give one image token per grid cell (9 tokens), the
# alignment CLIP-L/14 has with objects at 336 px. With 56 px / 14 px patches the cells straddle 4x4 patches and the
# tiny model did not learn to answer from the image within the CPU budget (held-out accuracy at chance).
SHAPES_IMAGE_SIZE = 84
SHAPES_PATCH_SIZE = 28
# Base vocabulary of the tiny tokenizer the towers are built with (the tests' 700). Its merges go to the shapes
# vocabulary, so SQ-LLaVA's system prompt takes 274 of a stage-2 sample's ~330 tokens. 1,024 pieces cut the prompt to
# 84 tokens and stage 2 to ~40% of its time, but the held-out accuracy fell from 0.58 to 0.49 (0.55 to 0.39 with
# LLaVA's prompt: chance) in the one run each we made (benchmarks/RESULTS.md), so the embedded default keeps 700.
TINY_TOWERS_VOCAB_SIZE = 700
# The warm towers for the default data and settings, written by `python -m recipes.build_tiny_towers`.
SHIPPED_TOWERS_DIR = os.path.join(RECIPES_DIR, "tiny_towers")
TOWERS_MANIFEST = "manifest.json"


def build_tiny_towers(
    out_dir: str, data_paths: dict[str, str], *, seed: int = 0, lm_steps: int = 300, vision_steps: int | None = None
) -> dict[str, str]:
    """Save a tiny CLIP vision tower and a tiny Llama, each briefly warmed up on the training split, as checkpoints.

    `vision_steps` defaults to `lm_steps`; 0 keeps a tower at its random initialisation.
    """
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from recipes.tiny import TINY_TEXT_CONFIG, TINY_VISION_CONFIG, build_tiny_tokenizer

    vision_dir, text_dir = os.path.join(out_dir, "clip-vision"), os.path.join(out_dir, "llama")
    torch.manual_seed(seed)
    vision_config = dict(TINY_VISION_CONFIG, image_size=SHAPES_IMAGE_SIZE, patch_size=SHAPES_PATCH_SIZE)
    vision = CLIPVisionModel(CLIPVisionConfig(**vision_config))
    _warm_up_vision_tower(vision, data_paths, steps=lm_steps if vision_steps is None else vision_steps, seed=seed)
    vision.save_pretrained(vision_dir)
    size = vision_config["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
        vision_dir
    )

    tokenizer = build_tiny_tokenizer(vocab_size=TINY_TOWERS_VOCAB_SIZE)
    config = LlamaConfig(
        **TINY_TEXT_CONFIG,
        vocab_size=len(tokenizer),
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    llm = LlamaForCausalLM(config)
    _warm_up_language_model(llm, tokenizer, data_paths, steps=lm_steps, seed=seed)
    llm.save_pretrained(text_dir)
    tokenizer.save_pretrained(text_dir)
    return {"vision": vision_dir, "text": text_dir}


def towers_manifest(data_paths: dict[str, str], *, seed: int, lm_steps: int) -> dict:
    """What a set of warm towers depends on: the build settings, the training split and the tokenizer.

    Two tower folders built from equal manifests are interchangeable (up to floating-point summation order). The data
    enters through the SHA-256 of the training split's stage-1 captions and stage-2 conversations (which name every
    training image and describe every object in it; held-out data never enters), the tokenizer through the SHA-256 of
    its `tokenizer.json` as `build_tiny_tokenizer` makes it.
    """
    from recipes.tiny import build_tiny_tokenizer

    digest = hashlib.sha256()
    for key in ("pretrain", "finetune"):
        with open(data_paths[key], "rb") as f:
            digest.update(f.read())
    tokenizer = build_tiny_tokenizer(vocab_size=TINY_TOWERS_VOCAB_SIZE)
    tokenizer_json = tokenizer.backend_tokenizer.to_str().encode()
    return {
        "seed": seed,
        "lm_steps": lm_steps,
        "vision_steps": lm_steps,
        "image_size": SHAPES_IMAGE_SIZE,
        "patch_size": SHAPES_PATCH_SIZE,
        "vocab_size": TINY_TOWERS_VOCAB_SIZE,
        "data_sha256": digest.hexdigest(),
        "tokenizer_sha256": hashlib.sha256(tokenizer_json).hexdigest(),
    }


def prepare_towers(
    out_dir: str, data_paths: dict[str, str], *, seed: int, lm_steps: int, shipped_dir: str | None = SHIPPED_TOWERS_DIR
) -> tuple[dict[str, str], str]:
    """The two warm towers under `out_dir`: copied from `shipped_dir` when its manifest equals this run's, else built.

    Returns `(paths, source)` with `source` `"shipped"` or `"built"`.
    """
    wanted = towers_manifest(data_paths, seed=seed, lm_steps=lm_steps)
    manifest_path = os.path.join(shipped_dir, TOWERS_MANIFEST) if shipped_dir else None
    if manifest_path and os.path.isfile(manifest_path):
        with open(manifest_path, encoding="utf-8") as f:
            shipped = json.load(f)
        if shipped.get("towers") == wanted:
            paths = {}
            for name, folder in (("vision", "clip-vision"), ("text", "llama")):
                paths[name] = os.path.join(out_dir, folder)
                shutil.rmtree(paths[name], ignore_errors=True)
                shutil.copytree(os.path.join(shipped_dir, folder), paths[name])
            logger.info("Using the warm towers shipped in %s (`python -m recipes.build_tiny_towers`).", shipped_dir)
            return paths, "shipped"
        differing = sorted(k for k in wanted if shipped.get("towers", {}).get(k) != wanted[k])
        logger.info("The shipped towers were built for other settings (%s): building them.", ", ".join(differing))
    return build_tiny_towers(out_dir, data_paths, seed=seed, lm_steps=lm_steps), "built"


def _warm_up_vision_tower(vision, data_paths: dict[str, str], *, steps: int, seed: int, batch_size: int = 32) -> None:
    """Train the tower to tell which caption words describe its image (multi-label, from the layer -2 patch features
    SQ-LLaVA uses), on the stage-1 captions of the training split: image-text supervision, as CLIP's pretraining."""
    if steps <= 0:
        return
    import re

    import torch

    from processing.processing_sqllava import build_image_processor
    from recipes.data import load_image

    with open(data_paths["pretrain"], encoding="utf-8") as f:
        records = json.load(f)
    captions = [r["conversations"][1]["value"].lower() for r in records]
    vocabulary = sorted({w for c in captions for w in re.findall(r"[a-z]+", c)})
    index = {w: i for i, w in enumerate(vocabulary)}
    targets = torch.zeros(len(captions), len(vocabulary))
    for row, caption in enumerate(captions):
        targets[row, [index[w] for w in re.findall(r"[a-z]+", caption)]] = 1.0
    image_processor = build_image_processor(vision.config.image_size)
    paths = [os.path.join(data_paths["image_folder"], r["image"]) for r in records]
    # Every image is drawn about `steps * batch_size / len(paths)` times (8x at the defaults): decode and preprocess
    # each once (3,000 images of 84 px: 254 MB).
    all_pixels = torch.cat(
        [
            image_processor([load_image(p) for p in paths[i : i + 256]], return_tensors="pt")["pixel_values"]
            for i in range(0, len(paths), 256)
        ]
    )
    tokens = (vision.config.image_size // vision.config.patch_size) ** 2
    head = torch.nn.Linear(tokens * vision.config.hidden_size, len(vocabulary))
    optimizer = torch.optim.AdamW(list(vision.parameters()) + list(head.parameters()), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    vision.train()
    for step in range(steps):
        idx = torch.randint(len(paths), (batch_size,), generator=generator).tolist()
        pixels = all_pixels[idx]
        features = vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(features.flatten(1)), targets[idx])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            logger.info("Vision warm-up step %d/%d: loss %.3f", step + 1, steps, loss.item())
    vision.eval()


def _lm_corpus(data_paths: dict[str, str]) -> list[str]:
    """Text-only reading-comprehension dialogues from the training split (no image, no eval data): each image's
    caption followed by its Vicuna-style questions and answers.

    A real Vicuna answers questions about text in its context; a tiny LM trained only on bare dialogues learns answer
    priors, never to look back, and then cannot use image tokens either (held-out accuracy stayed at chance). With
    the caption in context, it learns to read its context, and the projector only has to make the image read like one.
    """
    with open(data_paths["pretrain"], encoding="utf-8") as f:
        captions = {record["image"]: record["conversations"][1]["value"] for record in json.load(f)}
    texts = list(captions.values())
    with open(data_paths["finetune"], encoding="utf-8") as f:
        for record in json.load(f):
            turns = [t["value"].replace("<image>", "").strip() for t in record["conversations"]]
            dialogue = " ".join(f"USER: {q} ASSISTANT: {a}</s>" for q, a in zip(turns[::2], turns[1::2]))
            texts.append(f"{captions.get(record['image'], '')} {dialogue}".strip())
    return texts


def _warm_up_language_model(llm, tokenizer, data_paths, *, steps: int, seed: int, batch_size: int = 16) -> None:
    import torch

    texts = _lm_corpus(data_paths)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(llm.parameters(), lr=3e-3, weight_decay=0.0)
    llm.train()
    for step in range(steps):
        idx = torch.randint(len(texts), (batch_size,), generator=generator).tolist()
        batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True, max_length=192)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = llm(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            logger.info("LM warm-up step %d/%d: loss %.3f", step + 1, steps, loss.item())
    llm.eval()


def _stage_args(script, config: str, overrides: dict[str, object]):
    argv = ["--config", config]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    return script.parse_args(argv)


def run_stage1(towers: dict[str, str], data: dict[str, str], output_dir: str, **overrides) -> str:
    """`recipes/pretrain.py` with `configs/tiny/pretrain.yaml` on the tiny towers; `overrides` are YAML keys."""
    from recipes import pretrain

    config = os.path.join(RECIPES_DIR, "configs", "tiny", "pretrain.yaml")
    return pretrain.main(
        *_stage_args(
            pretrain,
            config,
            {
                "vision_tower_name_or_path": towers["vision"],
                "text_model_name_or_path": towers["text"],
                "data_path": data["pretrain"],
                "image_folder": data["image_folder"],
                "output_dir": output_dir,
                **overrides,
            },
        )
    )


def run_stage2(
    stage1_dir: str, data: dict[str, str], output_dir: str, export_dir: str, *, processes: int = 1, **overrides
) -> dict:
    """`recipes/finetune.py` with `configs/tiny/finetune.yaml` from a stage-1 folder, exporting a merged model.

    With `processes > 1` it runs as `accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml` (DDP over gloo,
    one intra-op thread per process) with the YAML's global batch split across them, so the same optimizer steps see
    the same number of samples; otherwise in this process.
    """
    from recipes import finetune

    config = os.path.join(RECIPES_DIR, "configs", "tiny", "finetune.yaml")
    overrides = {
        "model_name_or_path": stage1_dir,
        "data_path": data["finetune"],
        "image_folder": data["image_folder"],
        "output_dir": output_dir,
        "export_dir": export_dir,
        **overrides,
    }
    if processes <= 1:
        return finetune.main(*_stage_args(finetune, config, overrides))
    return _launch_processes(finetune, config, overrides, processes)


def _launch_processes(script, config: str, overrides: dict[str, object], processes: int) -> dict:
    """Run a stage script on `processes` CPU processes (DDP, gloo) with `accelerate launch`; returns its outputs."""
    import socket
    import subprocess

    if processes != 2:
        raise ValueError(f"`processes` must be 1 or 2 (recipes/accelerate/cpu_2proc.yaml), got {processes}.")
    training_args = _stage_args(script, config, overrides)[2]
    global_batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    if training_args.per_device_train_batch_size % processes:
        raise ValueError(
            f"per_device_train_batch_size={training_args.per_device_train_batch_size} does not split over {processes} "
            "processes; give an even batch size or processes=1."
        )
    overrides = dict(overrides, per_device_train_batch_size=training_args.per_device_train_batch_size // processes)
    with socket.socket() as probe:  # a free port for the processes to meet on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", os.path.join(RECIPES_DIR, "accelerate", "cpu_2proc.yaml"),
        "--main_process_port", str(port),
        os.path.abspath(script.__file__), "--config", config,
    ]  # fmt: skip
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    python_path = os.pathsep.join(filter(None, [_REPO_ROOT, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=python_path)
    logger.info("%s on %d processes (global batch %d): %s", os.path.basename(script.__file__), processes, global_batch,
                " ".join(command))  # fmt: skip
    subprocess.run(command, check=True, env=env)
    outputs = {"adapter": training_args.output_dir}
    if overrides.get("export_dir"):
        outputs["merged"] = overrides["export_dir"]
    return outputs


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished child processes."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def use_one_thread() -> None:
    """One torch intra-op thread (see the module docstring: a second one costs far more under load than it gains)."""
    import torch

    torch.set_num_threads(1)


def run(
    workdir: str,
    *,
    num_train: int,
    num_eval: int,
    seed: int,
    lm_steps: int,
    stage2_epochs: float | None = None,
    processes: int = 1,
) -> dict:
    from recipes.synthetic import generate_shapes_dataset

    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    out = os.path.join(workdir, "outputs", "tiny")
    t0, c0 = time.perf_counter(), _cpu_seconds()
    data = generate_shapes_dataset(
        os.path.join(workdir, "data", "shapes"),
        num_train=num_train,
        num_eval=num_eval,
        seed=seed,
        image_size=SHAPES_IMAGE_SIZE,
    )
    timings["data"] = time.perf_counter() - t0
    cpu["data"] = _cpu_seconds() - c0

    t0, c0 = time.perf_counter(), _cpu_seconds()
    towers, towers_source = prepare_towers(os.path.join(out, "towers"), data, seed=seed, lm_steps=lm_steps)
    timings["towers"] = time.perf_counter() - t0
    cpu["towers"] = _cpu_seconds() - c0

    t0, c0 = time.perf_counter(), _cpu_seconds()
    stage1_dir = run_stage1(towers, data, os.path.join(out, "pretrain"), seed=seed)
    timings["stage1"] = time.perf_counter() - t0
    cpu["stage1"] = _cpu_seconds() - c0

    t0, c0 = time.perf_counter(), _cpu_seconds()
    export_dir = os.path.join(out, "merged")
    budget = {} if stage2_epochs is None else {"num_train_epochs": stage2_epochs}
    run_stage2(
        stage1_dir, data, os.path.join(out, "finetune"), export_dir, processes=processes, seed=seed, **budget
    )
    timings["stage2"] = time.perf_counter() - t0
    cpu["stage2"] = _cpu_seconds() - c0

    t0, c0 = time.perf_counter(), _cpu_seconds()
    report = evaluate_export(export_dir, data, seed=seed)
    timings["eval"] = time.perf_counter() - t0
    cpu["eval"] = _cpu_seconds() - c0
    report["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    # CPU seconds of this process and the stage-2 processes: on an idle machine the wall time is about the single-
    # process phases' CPU time plus half of stage 2's (two processes), whatever the load was during this run.
    report["cpu_s"] = {k: round(v, 1) for k, v in cpu.items()}
    report["towers"] = towers_source
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def shapes_accuracy(
    model, processor, data: dict[str, str], answers_file: str, *, system_prompt: str | None, batch_size: int = 16
) -> dict:
    """A fresh (not resumed) `python -m recipes.eval` answer + score of the `shapes` benchmark on `eval.jsonl`."""
    from recipes.eval.answering import answer_benchmark
    from recipes.eval.common import get_benchmark, score_answers

    if os.path.exists(answers_file):
        os.remove(answers_file)
    benchmark, root = get_benchmark("shapes"), os.path.dirname(data["eval"])
    report = answer_benchmark(
        model,
        processor,
        benchmark,
        root,
        answers_file,
        question_file=data["eval"],
        image_folder=data["image_folder"],
        batch_size=batch_size,
        max_new_tokens=8,
        system_prompt=system_prompt,
        model_id=os.path.basename(str(getattr(model, "name_or_path", "") or "model").rstrip("/")),
        progress=False,
    )
    score = score_answers(benchmark, root, answers_file, question_file=data["eval"])
    return {"scores": score["metrics"], "images_per_second": report.questions_per_second, "answers": report.as_dict()}


def evaluate_export(export_dir: str, data: dict[str, str], *, seed: int) -> dict:
    """Load the exported folder as a Hub user would, score held-out answers, and let the model ask questions."""
    from processing.processing_sqllava import SQ_SYSTEM_PROMPT
    from recipes.loading import load_model_and_processor
    from recipes.self_question import self_question

    # AutoModelForImageTextToText (AutoModelForVision2Seq on 4.x) + AutoProcessor, trust_remote_code=True.
    model, processor = load_model_and_processor(export_dir, dtype="float32")
    with open(data["meta"], encoding="utf-8") as f:
        meta = json.load(f)
    answers_file = os.path.join(os.path.dirname(export_dir), "eval_answers.jsonl")
    # Stage 2 trains every sample with the SQ system prompt (as SQ-LLaVA does), so it is the prompt the tiny model
    # answers with; the 7B model generalises to LLaVA's shorter prompt, a 2-layer one much less (both are reported).
    result = shapes_accuracy(model, processor, data, answers_file, system_prompt=SQ_SYSTEM_PROMPT)
    llava_result = shapes_accuracy(
        model, processor, data, answers_file.replace(".jsonl", ".llava_prompt.jsonl"), system_prompt=None
    )
    with open(data["eval"], encoding="utf-8") as f:
        first = json.loads(f.readline())
    with open(answers_file, encoding="utf-8") as f:
        first_answer = next(json.loads(line) for line in f if json.loads(line)["question_id"] == first["question_id"])
    sq = self_question(
        model,
        processor,
        os.path.join(data["image_folder"], first["image"]),
        num_questions=3,
        answer=True,
        seed=seed,
        max_new_tokens=32,
        # The synthetic data's caption request (recipes/synthetic.py), not the authors' detailed-description one.
        describe_prompt="Describe the image briefly.",
        describe_max_new_tokens=32,
    )
    return {
        "accuracy": result["scores"]["exact_match"],
        "accuracy_llava_prompt": llava_result["scores"]["exact_match"],
        "chance_accuracy": meta["chance_accuracy"],
        "majority_accuracy": meta["majority_accuracy"],
        "uniform_chance_accuracy": meta["uniform_chance_accuracy"],
        "num_questions": meta["num_questions"],
        "images_per_second": result["images_per_second"],
        "example": {
            "image": first["image"],
            "question": first["text"],
            "expected": first["answer"],
            "answer": first_answer["text"],
        },
        "self_questioning": {"description": sq.description, "questions": sq.questions},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--workdir", default=".", help="where data/shapes and outputs/tiny are written")
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--num-eval", type=int, default=100)
    parser.add_argument("--lm-steps", type=int, default=800, help="warm-up steps of each tiny tower")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage2-epochs", type=float, default=None, help="override configs/tiny/finetune.yaml")
    parser.add_argument(
        "--processes",
        type=int,
        default=min(2, os.cpu_count() or 1),
        choices=[1, 2],
        help="stage-2 processes (DDP on the CPU, one thread each); default: 2 where there are 2 cores",
    )
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    use_one_thread()
    report = run(
        os.path.abspath(args.workdir),
        num_train=args.num_train,
        num_eval=args.num_eval,
        seed=args.seed,
        lm_steps=args.lm_steps,
        stage2_epochs=args.stage2_epochs,
        processes=args.processes,
    )
    acc, chance = report["accuracy"], report["chance_accuracy"]
    print(
        f"\nHeld-out answer accuracy: {acc:.3f} with the SQ system prompt it was trained with, "
        f"{report['accuracy_llava_prompt']:.3f} with LLaVA's answering prompt (chance: {chance:.3f} per-question-type "
        f"majority answer, {report['uniform_chance_accuracy']:.3f} uniform) on {report['num_questions']} questions"
    )
    ex = report["example"]
    print(f"Held-out image {ex['image']}: Q: {ex['question']}  A: {ex['answer']}  (expected: {ex['expected']})")
    sq = report["self_questioning"]
    print(f"The model describes it: {sq['description']}")
    for qa in sq["questions"]:
        print(f"  it asks: {qa['question']}  and answers: {qa['answer']}")
    print(f"Timings (s, towers {report['towers']}):", report["timings_s"], "CPU (s):", report["cpu_s"])
    if not math.isfinite(acc):
        raise SystemExit("accuracy is not finite")
    return report


if __name__ == "__main__":
    main()
