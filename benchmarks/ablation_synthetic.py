"""A miniature of SQ-LLaVA's ablation on the synthetic shapes data, on a CPU.

The same tiny towers, data and budget are trained four ways (both stages each time, `recipes/pretrain.py` then
`recipes/finetune.py` with the tiny configs):

    (a) LLaVA-1.5: MLP projector (`mlp2x_gelu`), plain instruction tuning (`sq_ratio 0`)
    (b) + self-questioning (`sq_ratio 0.5`)
    (c) + prototype extractor (`projector_type prototype`, `sq_ratio 0`)
    (d) both (SQ-LLaVA)

for each seed, and reports held-out answer accuracy (exact match on `eval.jsonl`) and, for (b) and (d), the
quality of the questions the model asks about held-out images (`recipes/self_question.py` sampling): the share of
well-formed questions, of grounded ones (mentioning only shapes and colours present in the image), and distinct-2.

    python benchmarks/ablation_synthetic.py                      # 3 seeds, the embedded default's budget
    python benchmarks/ablation_synthetic.py --smoke              # a minute: checks the pipeline, numbers meaningless

Writes `<workdir>/ablation.json` and a markdown table to stdout (and to `--table`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SETTINGS = {
    "a": {"label": "(a) LLaVA-1.5 (MLP projector)", "projector_type": "mlp2x_gelu", "sq_ratio": 0.0},
    "b": {"label": "(b) + self-questioning", "projector_type": "mlp2x_gelu", "sq_ratio": 0.5},
    "c": {"label": "(c) + prototype extractor", "projector_type": "prototype", "sq_ratio": 0.0},
    "d": {"label": "(d) SQ-LLaVA (both)", "projector_type": "prototype", "sq_ratio": 0.5},
}


def answer_accuracy(model, processor, data: dict[str, str], answers_file: str) -> float:
    from processing.processing_sqllava import SQ_SYSTEM_PROMPT
    from recipes.run_tiny import shapes_accuracy

    # Every setting trains stage 2 with the SQ system prompt (recipes/run_tiny.py explains why it answers with it).
    result = shapes_accuracy(model, processor, data, answers_file, system_prompt=SQ_SYSTEM_PROMPT, batch_size=32)
    return result["scores"]["exact_match"]


def question_quality(model, processor, data: dict[str, str], *, num_images: int, num_questions: int, seed: int):
    """Ask `num_questions` questions about each of the first `num_images` held-out images and judge them."""
    from recipes.self_question import self_question
    from recipes.synthetic import distinct_n, load_scenes, question_is_grounded, question_is_well_formed, scene_of

    scenes = load_scenes(data["scenes"])
    with open(data["eval"], encoding="utf-8") as f:
        images = list(dict.fromkeys(json.loads(line)["image"] for line in f))[:num_images]
    questions, grounded, well_formed = [], 0, 0
    for i, image in enumerate(images):
        result = self_question(
            model,
            processor,
            os.path.join(data["image_folder"], image),
            num_questions=num_questions,
            answer=False,
            seed=seed + i,
            max_new_tokens=24,
            # The synthetic data's caption request (recipes/synthetic.py), not the authors' detailed-description one.
            describe_prompt="Describe the image briefly.",
            describe_max_new_tokens=32,
            max_rounds=1,
        )
        scene = scene_of(image, scenes)
        for qa in result.questions:
            questions.append(qa["question"])
            well_formed += question_is_well_formed(qa["question"])
            grounded += question_is_grounded(qa["question"], scene)
    asked = num_images * num_questions
    return {
        "well_formed": well_formed / asked,  # empty or duplicate samples count as failures
        "grounded": grounded / asked,
        "distinct_2": distinct_n(questions, n=2),
        "examples": questions[:4],
    }


def run(args) -> dict:
    import torch

    from recipes.loading import load_model_and_processor
    from recipes.run_tiny import SHAPES_IMAGE_SIZE, build_tiny_towers, run_stage1, run_stage2
    from recipes.synthetic import generate_shapes_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.workdir, exist_ok=True)
    data = generate_shapes_dataset(
        os.path.join(args.workdir, "data"),
        num_train=args.num_train,
        num_eval=args.num_eval,
        seed=0,
        image_size=SHAPES_IMAGE_SIZE,
    )
    with open(data["meta"], encoding="utf-8") as f:
        meta = json.load(f)
    budget = {"num_train_epochs": args.stage2_epochs}
    if args.max_steps:
        budget = {"max_steps": args.max_steps}
    rows = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        towers = build_tiny_towers(
            os.path.join(args.workdir, f"seed{seed}", "towers"), data, seed=seed, lm_steps=args.lm_steps
        )
        stage1 = {}
        for projector in ("mlp2x_gelu", "prototype"):
            stage1[projector] = run_stage1(
                towers,
                data,
                os.path.join(args.workdir, f"seed{seed}", f"pretrain-{projector}"),
                seed=seed,
                projector_type=projector,
                report_to="none",
                **({"max_steps": args.max_steps} if args.max_steps else {}),
            )
        for key in args.settings:
            setting = SETTINGS[key]
            out = os.path.join(args.workdir, f"seed{seed}", key)
            run_stage2(
                stage1[setting["projector_type"]],
                data,
                os.path.join(out, "adapter"),
                os.path.join(out, "merged"),
                seed=seed,
                sq_ratio=setting["sq_ratio"],
                report_to="none",
                **budget,
            )
            model, processor = load_model_and_processor(os.path.join(out, "merged"), dtype="float32")
            row = {
                "setting": key,
                "seed": seed,
                "accuracy": answer_accuracy(model, processor, data, os.path.join(out, "answers.jsonl")),
            }
            if setting["sq_ratio"] > 0:
                row.update(
                    question_quality(
                        model,
                        processor,
                        data,
                        num_images=args.question_images,
                        num_questions=args.num_questions,
                        seed=seed,
                    )
                )
            rows.append(row)
            print(json.dumps(row), flush=True)
        print(f"seed {seed} done in {time.perf_counter() - t0:.0f} s", flush=True)
    report = {
        "rows": rows,
        "chance_accuracy": meta["chance_accuracy"],
        "uniform_chance_accuracy": meta["uniform_chance_accuracy"],
        "args": vars(args),
    }
    with open(os.path.join(args.workdir, "ablation.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def table(report: dict) -> str:
    def mean_sd(values):
        if not values:
            return "-"
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"

    lines = [
        "| setting | answer accuracy | well-formed questions | grounded questions | distinct-2 |",
        "|---|---|---|---|---|",
    ]
    for key, setting in SETTINGS.items():
        rows = [r for r in report["rows"] if r["setting"] == key]
        if not rows:
            continue
        cells = [mean_sd([r["accuracy"] for r in rows])]
        for metric in ("well_formed", "grounded", "distinct_2"):
            cells.append(mean_sd([r[metric] for r in rows if metric in r]))
        lines.append(f"| {setting['label']} | " + " | ".join(cells) + " |")
    n = len({r["seed"] for r in report["rows"]})
    lines.append("")
    lines.append(
        f"Mean ± standard deviation over {n} seed(s). Chance (per-question-type majority answer): "
        f"{report['chance_accuracy']:.3f}; uniform over each type's answers: "
        f"{report['uniform_chance_accuracy']:.3f}."
    )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--workdir", default="outputs/ablation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-eval", type=int, default=100)
    parser.add_argument("--lm-steps", type=int, default=800)
    parser.add_argument("--stage2-epochs", type=float, default=3.0)
    parser.add_argument("--max-steps", type=int, default=0, help="cap both stages at this many steps (smoke runs)")
    parser.add_argument("--question-images", type=int, default=20)
    parser.add_argument("--num-questions", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (1, as recipes.run_tiny: a second one costs far more under load than it gains)",
    )
    parser.add_argument("--table", default=None, help="also write the markdown table here")
    parser.add_argument("--smoke", action="store_true", help="1 seed, tiny data, 2 steps per stage")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.num_train, args.num_eval, args.lm_steps = [0], 32, 4, 2
        args.max_steps, args.question_images, args.num_questions = 2, 2, 2
    report = run(args)
    text = table(report)
    print(text)
    if args.table:
        with open(args.table, "w") as f:
            f.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
