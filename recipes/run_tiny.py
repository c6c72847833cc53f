"""The embedded default: the whole SQ-LLaVA pipeline, offline, on a CPU, in minutes.

1. generates the synthetic shapes dataset (LLaVA JSON + image folder, `recipes/synthetic.py`);
2. builds two small towers and saves them like Hub checkpoints: a random CLIP vision tower, and a small Llama whose
   language modelling is warmed up on the dataset's text (the stand-in for Vicuna being a pretrained LM);
3. stage 1 (`recipes/pretrain.py`, `recipes/configs/tiny/pretrain.yaml`): alignment on captions;
4. stage 2 (`recipes/finetune.py`, `recipes/configs/tiny/finetune.yaml`): self-questioning instruction tuning with
   LLM-LoRA + ViT-LoRA, then export of a merged, verified, Hub-ready folder;
5. loads that folder back with `AutoModelForImageTextToText.from_pretrained(..., trust_remote_code=True)`, measures
   held-out answer accuracy against chance, and shows an answer and self-generated questions for a held-out image.

```bash
python -m recipes.run_tiny                      # everything under ./outputs/tiny and ./data/shapes
python -m recipes.run_tiny --workdir /tmp/tiny  # elsewhere
```
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

logger = logging.getLogger("sqllava.run_tiny")
RECIPES_DIR = os.path.dirname(os.path.abspath(__file__))


def build_tiny_towers(out_dir: str, data_paths: dict[str, str], *, seed: int = 0, lm_steps: int = 300) -> dict[str, str]:
    """Save a random tiny CLIP vision tower and a tiny Llama (LM-warmed on the dataset's text) as local checkpoints."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from recipes.tiny import TINY_TEXT_CONFIG, TINY_VISION_CONFIG, build_tiny_tokenizer

    vision_dir, text_dir = os.path.join(out_dir, "clip-vision"), os.path.join(out_dir, "llama")
    torch.manual_seed(seed)
    vision = CLIPVisionModel(CLIPVisionConfig(**TINY_VISION_CONFIG))
    vision.save_pretrained(vision_dir)
    size = TINY_VISION_CONFIG["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
        vision_dir
    )

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        **TINY_TEXT_CONFIG, vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    llm = LlamaForCausalLM(config)
    _warm_up_language_model(llm, tokenizer, data_paths, steps=lm_steps, seed=seed)
    llm.save_pretrained(text_dir)
    tokenizer.save_pretrained(text_dir)
    return {"vision": vision_dir, "text": text_dir}


def _lm_corpus(data_paths: dict[str, str]) -> list[str]:
    """Text-only Vicuna-style dialogues and captions built from the training split (no image, no eval data)."""
    texts = []
    with open(data_paths["finetune"], encoding="utf-8") as f:
        for record in json.load(f):
            turns = [t["value"].replace("<image>", "").strip() for t in record["conversations"]]
            texts.append(" ".join(f"USER: {q} ASSISTANT: {a}</s>" for q, a in zip(turns[::2], turns[1::2])))
    with open(data_paths["pretrain"], encoding="utf-8") as f:
        texts += [record["conversations"][1]["value"] for record in json.load(f)]
    return texts


def _warm_up_language_model(llm, tokenizer, data_paths, *, steps: int, seed: int, batch_size: int = 16) -> None:
    import torch

    texts = _lm_corpus(data_paths)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(llm.parameters(), lr=3e-3, weight_decay=0.0)
    llm.train()
    for step in range(steps):
        idx = torch.randint(len(texts), (batch_size,), generator=generator).tolist()
        batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True, max_length=160)
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


def run(workdir: str, *, num_train: int, num_eval: int, seed: int, lm_steps: int, skip_existing: bool = True) -> dict:
    from recipes import finetune, pretrain
    from recipes.synthetic import generate_shapes_dataset

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data_dir = os.path.join(workdir, "data", "shapes")
    data = generate_shapes_dataset(data_dir, num_train=num_train, num_eval=num_eval, seed=seed)
    timings["data"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    towers = build_tiny_towers(os.path.join(workdir, "outputs", "tiny", "towers"), data, seed=seed, lm_steps=lm_steps)
    timings["towers"] = time.perf_counter() - t0

    stage1_dir = os.path.join(workdir, "outputs", "tiny", "pretrain")
    stage2_dir = os.path.join(workdir, "outputs", "tiny", "finetune")
    export_dir = os.path.join(workdir, "outputs", "tiny", "merged")
    t0 = time.perf_counter()
    pretrain.main(*_stage_args(pretrain, os.path.join(RECIPES_DIR, "configs", "tiny", "pretrain.yaml"), {
        "vision_tower_name_or_path": towers["vision"],
        "text_model_name_or_path": towers["text"],
        "data_path": data["pretrain"],
        "image_folder": data["image_folder"],
        "output_dir": stage1_dir,
        "seed": seed,
    }))
    timings["stage1"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    finetune.main(*_stage_args(finetune, os.path.join(RECIPES_DIR, "configs", "tiny", "finetune.yaml"), {
        "model_name_or_path": stage1_dir,
        "data_path": data["finetune"],
        "image_folder": data["image_folder"],
        "output_dir": stage2_dir,
        "export_dir": export_dir,
        "seed": seed,
    }))
    timings["stage2"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = evaluate_export(export_dir, data, seed=seed)
    timings["eval"] = time.perf_counter() - t0
    report["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    with open(os.path.join(workdir, "outputs", "tiny", "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def evaluate_export(export_dir: str, data: dict[str, str], *, seed: int) -> dict:
    """Load the exported folder as a Hub user would, score held-out answers, and let the model ask questions."""
    from recipes.evaluate import BENCHMARKS, evaluate_model, load_model_and_processor
    from recipes.self_question import self_question

    # AutoModelForImageTextToText (AutoModelForVision2Seq on 4.x) + AutoProcessor, trust_remote_code=True.
    model, processor = load_model_and_processor(export_dir, dtype="float32")
    with open(data["meta"], encoding="utf-8") as f:
        meta = json.load(f)
    answers_file = os.path.join(os.path.dirname(export_dir), "eval_answers.jsonl")
    if os.path.exists(answers_file):
        os.remove(answers_file)  # a fresh score, not a resumed one
    preset = BENCHMARKS["shapes"]
    result = evaluate_model(
        model, processor, data["eval"], answers_file, image_folder=data["image_folder"], batch_size=16,
        max_new_tokens=8, answer_suffix=preset["answer_suffix"], metric=preset["metric"],
        metric_kwargs=preset["metric_kwargs"], progress=False,
    )
    with open(data["eval"], encoding="utf-8") as f:
        first = json.loads(f.readline())
    with open(answers_file, encoding="utf-8") as f:
        first_answer = next(json.loads(line) for line in f if json.loads(line)["question_id"] == first["question_id"])
    sq = self_question(
        model, processor, os.path.join(data["image_folder"], first["image"]), num_questions=3, answer=True,
        seed=seed, max_new_tokens=32,
    )
    return {
        "accuracy": result["scores"]["exact_match"],
        "chance_accuracy": meta["chance_accuracy"],
        "majority_accuracy": meta["majority_accuracy"],
        "num_questions": meta["num_questions"],
        "images_per_second": result["images_per_second"],
        "example": {
            "image": first["image"], "question": first["text"], "expected": first["answer"],
            "answer": first_answer["text"],
        },
        "self_questioning": {"description": sq.description, "questions": sq.questions},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=".", help="where data/shapes and outputs/tiny are written")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-eval", type=int, default=100)
    parser.add_argument("--lm-steps", type=int, default=300, help="LM warm-up steps of the tiny Llama")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = run(os.path.abspath(args.workdir), num_train=args.num_train, num_eval=args.num_eval, seed=args.seed,
                 lm_steps=args.lm_steps)
    acc, chance = report["accuracy"], report["chance_accuracy"]
    print(f"\nHeld-out answer accuracy: {acc:.3f} (chance {chance:.3f}, majority answer "
          f"{report['majority_accuracy']:.3f}) on {report['num_questions']} questions")
    ex = report["example"]
    print(f"Held-out image {ex['image']}: Q: {ex['question']}  A: {ex['answer']}  (expected: {ex['expected']})")
    sq = report["self_questioning"]
    print(f"The model describes it: {sq['description']}")
    for qa in sq["questions"]:
        print(f"  it asks: {qa['question']}  and answers: {qa['answer']}")
    print("Timings (s):", report["timings_s"])
    if not math.isfinite(acc):
        raise SystemExit("accuracy is not finite")
    return report


if __name__ == "__main__":
    main()
