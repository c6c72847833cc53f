"""Answering throughput of `python -m recipes.eval answer` at batch 1 (LLaVA's scripts) vs batch 16, in the same run.

Both rows run the package's own path (`recipes.eval.answering.answer_questions`: image loading, the chat-template
prompt, the processor with left padding, greedy `generate`, decoding, one flushed answers-file batch at a time) on
the same questions, interleaved (1, 16, 1, 16, ...), each into a fresh answers file; the answers of the two batch
sizes are compared too (left padding must not change greedy answers).

- CPU (default): the tiny random SQ-LLaVA of `recipes/tiny.py` (56 px CLIP, 2-layer Llama), one intra-op thread.
- `--device cuda`: the 7B shape (CLIP ViT-L/14-336 + Llama-7B, vocabulary 32,064, prototype projector), random
  bf16 weights, SDPA; the tiny tokenizer stands in for Vicuna's (nothing is downloaded), so answers are random ids.

Questions: `--questions` images of 640x480 (JPEG, drawn at random), each asked one VQA-style question with LLaVA's
short-answer suffix; `--max-new-tokens` new tokens at most (a short answer is 1-3 tokens + EOS; random weights
rarely stop early, so most rows generate the full budget at both batch sizes alike).

    python benchmarks/bench_answer.py                       # CPU, tiny model
    python benchmarks/bench_answer.py --shape 7b-smoke --questions 8 --repeat 1   # the 7B code path, CPU-sized
    python benchmarks/bench_answer.py --device cuda --questions 128 --max-new-tokens 8
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def build(shape: str, device: str):
    """`(model, processor)`: the tiny model, or the 7B shape with random bf16 weights (`7b-smoke`: the same code path
    at a CPU-sized width, to check the script before spending GPU time)."""
    from recipes.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    if shape == "tiny":
        return build_tiny_model(tokenizer).to(device), build_tiny_processor(tokenizer)
    from benchmarks.bench_train import VISION_7B, build_model

    torch.manual_seed(0)
    model = build_model(
        "sqllava", "prototype", device, smoke=shape == "7b-smoke",
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), pad_token_id=tokenizer.pad_token_id,
    ).eval()  # fmt: skip
    return model, build_tiny_processor(tokenizer, image_size=VISION_7B["image_size"])


def make_questions(folder: str, count: int, seed: int = 0):
    from PIL import Image

    from recipes.eval.common import SHORT_ANSWER_SUFFIX, Question

    rng = random.Random(seed)
    questions = []
    for i in range(count):
        image = Image.new("RGB", (640, 480), tuple(rng.randrange(256) for _ in range(3)))
        for _ in range(8):  # a few random rectangles, so JPEG decoding does real work
            x, y = rng.randrange(560), rng.randrange(400)
            image.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 80, y + 80))
        name = f"{i:05d}.jpg"
        image.save(os.path.join(folder, name), quality=90)
        text = f"{rng.choice(['What colour is the largest box?', 'How many boxes are there?', 'Is it sunny?'])}"
        text += "\n" + SHORT_ANSWER_SUFFIX
        questions.append(Question(key=str(i), text=text, image=name, row={"question_id": i, "prompt": text}))
    return questions


def run_once(model, processor, benchmark, questions, folder, batch_size, max_new_tokens, device) -> dict:
    from recipes.eval.answering import answer_questions

    answers = os.path.join(folder, f"answers-{batch_size}-{time.perf_counter_ns()}.jsonl")
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    report = answer_questions(
        model, processor, benchmark, questions, answers, image_folder=folder, batch_size=batch_size,
        max_new_tokens=max_new_tokens, model_id="bench", progress=False,
    )  # fmt: skip
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    with open(answers, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    os.remove(answers)
    return {"seconds": seconds, "tokens": report.generated_tokens, "texts": texts}


def preprocessing_seconds(processor, questions, folder, batch_size) -> float:
    """Image decoding + the processor alone (prompts, tokenization, image preprocessing) over all questions."""
    from recipes.eval.answering import build_prompt, load_question_image

    start = time.perf_counter()
    for i in range(0, len(questions), batch_size):
        batch = questions[i : i + batch_size]
        images = [load_question_image(q, folder)[0] for q in batch]
        processor(text=[build_prompt(processor, q) for q in batch], images=images, padding=True, padding_side="left",
                  return_tensors="pt")  # fmt: skip
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--shape", default=None, choices=["tiny", "7b", "7b-smoke"], help="Default: tiny on cpu, 7b on cuda."
    )
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--batch-sizes", type=int, nargs=2, default=[1, 16], metavar=("BASELINE", "BATCHED"))
    parser.add_argument("--repeat", type=int, default=3, help="Interleaved runs of each batch size (median).")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads.")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    from recipes.eval.common import get_benchmark

    benchmark = get_benchmark("gqa")  # any loader-style benchmark: LLaVA's answer cleanup, answers keyed by id
    shape = args.shape or ("7b" if args.device == "cuda" else "tiny")
    model, processor = build(shape, args.device)
    with tempfile.TemporaryDirectory() as folder:
        questions = make_questions(folder, args.questions)
        run_once(model, processor, benchmark, questions[:2], folder, 2, 2, args.device)  # warm-up
        runs, preprocessing = {b: [] for b in args.batch_sizes}, []
        for _ in range(args.repeat):
            for batch_size in args.batch_sizes:
                result = run_once(
                    model, processor, benchmark, questions, folder, batch_size, args.max_new_tokens, args.device
                )
                runs[batch_size].append(result)
            # Interleaved too, so the share below compares times measured under the same load.
            preprocessing.append(preprocessing_seconds(processor, questions, folder, args.batch_sizes[1]))
    baseline, batched = args.batch_sizes
    rows = {}
    for batch_size, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        rows[batch_size] = {
            "seconds_median": seconds,
            "seconds_min": min(r["seconds"] for r in results),
            "questions_per_second": args.questions / seconds,
            "new_tokens": results[0]["tokens"],
        }
    same = runs[baseline][0]["texts"] == runs[batched][0]["texts"]
    differing = sum(a != b for a, b in zip(runs[baseline][0]["texts"], runs[batched][0]["texts"]))
    summary = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({args.threads} thread)",
        "shape": shape,
        "questions": args.questions,
        "max_new_tokens": args.max_new_tokens,
        "rows": rows,
        "speedup_median": rows[baseline]["seconds_median"] / rows[batched]["seconds_median"],
        "speedup_min": rows[baseline]["seconds_min"] / rows[batched]["seconds_min"],
        "preprocessing_seconds_median": statistics.median(preprocessing),
        "preprocessing_share_batched": statistics.median(
            p / r["seconds"] for p, r in zip(preprocessing, runs[batched])
        ),
        "same_answers": same,
        "answers_differing": differing,
    }
    print(f"| batch size | questions/s (median of {args.repeat}) | s (median) | s (min) | new tokens |")
    print("|---|---|---|---|---|")
    for batch_size, row in rows.items():
        print(f"| {batch_size} | {row['questions_per_second']:.2f} | {row['seconds_median']:.2f} | "
              f"{row['seconds_min']:.2f} | {row['new_tokens']} |")  # fmt: skip
    print(f"\nbatch {batched} / batch {baseline}: {summary['speedup_median']:.2f}x (median), "
          f"{summary['speedup_min']:.2f}x (min); identical answers: {same} ({differing} differ)")  # fmt: skip
    print(f"image decoding + processor alone: {summary['preprocessing_seconds_median']:.2f} s (median), "
          f"{100 * summary['preprocessing_share_batched']:.0f}% of the batch-{batched} time")  # fmt: skip
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
