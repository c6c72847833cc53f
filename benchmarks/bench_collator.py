"""Throughput of the self-questioning collator on one CPU core, next to baselines measured in the same run.

    python benchmarks/bench_collator.py [--samples 2000] [--batch-size 16] [--core 0]

Data: synthetic conversations shaped like LLaVA-1.5's mix665k (short-answer VQA with many turns, multi-turn
conversations, detailed descriptions, text-only ShareGPT), with pre-decoded 640x480 PIL images (COCO-like), the
real Llama/Vicuna vocabulary (`$SQLLAVA_FIXTURES/llama-spm-vocab.gguf`, else the tiny tokenizer, said in the output),
576 image tokens and the 336 px CLIP preprocessing of SQ-LLaVA-7B.

Rows (samples/s, one core, one intra-op thread):
- `llava15_labels`: LLaVA-1.5's `preprocess_v1` label construction (render, tokenize, re-tokenize every round
  for its length arithmetic), the reference implementation's cost; baseline of the ratios.
- `tokenize_conversation`: `SQLlavaProcessor.tokenize_conversation` alone (the floor of the collator's text path).
- `collator_text`: `SelfQuestioningCollator` with the image processor replaced by a no-op: vuser draw, tokenization,
  labels, truncation checks, padding, tensors.
- `image_processor`: the CLIP image processor alone on the batch's images.
- `collator_full`: the whole collator, image preprocessing included.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import sys
import time
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

WORDS = (
    "the a man woman dog cat table street car red blue green large small two three people standing sitting next to "
    "near on in with holding wearing white black picture image shows bus train kitchen room window tree sky water "
    "building sign food plate pizza sandwich phone computer bed chair umbrella horse bicycle motorcycle playing "
    "looking walking field grass snow beach ocean wave board surf ski player ball game tennis baseball frisbee"
).split()


def sentence(rng: random.Random, low: int, high: int, end: str = ".") -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
    return " ".join(words).capitalize() + end


def llava665k_like_records(n: int, seed: int = 0):
    """Records in the canonical format with the rough turn/length mix of llava_v1_5_mix665k."""
    from PIL import Image

    rng = random.Random(seed)
    images = [Image.new("RGB", (640, 480), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
              for _ in range(8)]
    for image in images:
        image.load()
    records = []
    for index in range(n):
        kind = rng.random()
        if kind < 0.45:  # VQAv2 / GQA / OCR-VQA: many short question-answer pairs
            turns = [(sentence(rng, 5, 12, "?"), sentence(rng, 1, 3)) for _ in range(rng.randint(3, 10))]
        elif kind < 0.75:  # LLaVA-Instruct conversations
            turns = [(sentence(rng, 8, 20, "?"), sentence(rng, 30, 90)) for _ in range(rng.randint(2, 5))]
        elif kind < 0.90:  # detailed description / complex reasoning
            turns = [(sentence(rng, 6, 15, "?"), sentence(rng, 80, 160))]
        else:  # ShareGPT text-only
            turns = [(sentence(rng, 10, 40, "?"), sentence(rng, 50, 200)) for _ in range(rng.randint(1, 4))]
        has_image = kind < 0.90
        messages = []
        for turn, (question, answer) in enumerate(turns):
            content = ("<image>\n" + question) if (turn == 0 and has_image) else question
            messages += [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
        records.append({"id": str(index), "index": index, "images": [images[index % 8]] if has_image else [],
                        "messages": messages})
    return records


def build_processor():
    from processing.processing_sqllava import SQLlavaProcessor, add_sqllava_special_tokens, build_image_processor

    fixtures = Path(os.environ.get("SQLLAVA_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))
    if (fixtures / "llama-spm-vocab.gguf").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(fixtures), gguf_file="llama-spm-vocab.gguf")
        vocab = "Llama/Vicuna SentencePiece (32,000 tokens)"
    else:
        from recipes.tiny import build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
        vocab = f"tiny tokenizer (Llama fixture absent under {fixtures})"
    tokenizer = copy.deepcopy(tokenizer)
    add_sqllava_special_tokens(tokenizer)
    return SQLlavaProcessor(build_image_processor(336), tokenizer, image_seq_length=576), vocab


def llava15_labels(record, tokenizer, system_prompt):
    """LLaVA-1.5 `preprocess_v1` (haotian-liu/LLaVA): prompt, tokenizer_image_token ids, round-length label masking."""

    def tokenizer_image_token(prompt):
        chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
        ids, offset = [], 0
        if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
            offset = 1
            ids.append(chunks[0][0])
        for i, chunk in enumerate(chunks):
            if i:
                ids.extend([-200] * (offset + 1) if offset else [-200])
            ids.extend(chunk[offset:])
        return ids

    prompt = system_prompt + " "
    for message in record["messages"]:
        if message["role"] == "user":
            prompt += "USER: " + message["content"] + " "
        else:
            prompt += "ASSISTANT: " + message["content"] + "</s>"
    input_ids = tokenizer_image_token(prompt)
    target = list(input_ids)
    cur_len = 1
    target[0] = -100
    for i, rou in enumerate(prompt.split("</s>")):
        if rou == "":
            break
        parts = rou.split(" ASSISTANT: ")
        if len(parts) != 2:
            break
        round_len = len(tokenizer_image_token(rou))
        instruction_len = len(tokenizer_image_token(parts[0] + " ASSISTANT: ")) - 2
        if i != 0:
            round_len -= 1
            instruction_len -= 1
        target[cur_len : cur_len + instruction_len] = [-100] * instruction_len
        cur_len += round_len
    return input_ids, target


class _NoImageProcessor:
    """Stands in for the image processor to time the collator's text path alone."""

    def __init__(self, processor):
        self._processor = processor
        self.image_processor = lambda images, return_tensors=None: {"pixel_values": None}

    def __getattr__(self, name):
        return getattr(self._processor, name)


def rate(fn, items, repeat: int = 1) -> float:
    fn(items[: max(1, len(items) // 20)])  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        count = fn(items)
        best = min(best, time.perf_counter() - start)
    return count / best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--core", type=int, default=0, help="CPU core to pin to (Linux).")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})
    import torch

    torch.set_num_threads(1)
    from recipes.collator import SelfQuestioningCollator

    processor, vocab = build_processor()
    records = llava665k_like_records(args.samples)
    batches = [records[i : i + args.batch_size] for i in range(0, len(records), args.batch_size)]
    collator = SelfQuestioningCollator(processor, sq_ratio=0.5, seed=0, max_length=2048)
    text_collator = SelfQuestioningCollator(_NoImageProcessor(processor), sq_ratio=0.5, seed=0, max_length=2048)
    system_prompt = collator.system_prompt

    def run_llava(rs):
        for r in rs:
            llava15_labels(r, processor.tokenizer, system_prompt)
        return len(rs)

    def run_tokenize(rs):
        for r in rs:
            processor.tokenize_conversation(r["messages"], mode="chat", system_prompt=system_prompt)
        return len(rs)

    def run_batches(c):
        def run(bs):
            n = 0
            for batch in bs:
                c(batch)
                n += len(batch)
            return n

        return run

    def run_images(bs):
        n = 0
        for batch in bs:
            images = [image for r in batch for image in r["images"]]
            if images:
                processor.image_processor(images, return_tensors="pt")
            n += len(batch)
        return n

    results = {
        "llava15_labels": rate(run_llava, records, args.repeat),
        "tokenize_conversation": rate(run_tokenize, records, args.repeat),
        "collator_text": rate(run_batches(text_collator), batches, args.repeat),
        "image_processor": rate(run_images, batches, 1),
        "collator_full": rate(run_batches(collator), batches, 1),
    }
    image_share = sum(1 for r in records if r["images"]) / len(records)
    tokens = [len(processor.tokenize_conversation(r["messages"], system_prompt=system_prompt)["input_ids"])
              for r in records[:300]]
    print(f"vocabulary: {vocab}; {len(records)} samples ({image_share:.0%} with a 640x480 image), batch "
          f"{args.batch_size}, mean {sum(tokens) / len(tokens):.0f} tokens/sample (576 image tokens), 1 core")
    baseline = results["llava15_labels"]
    print(f"{'row':<24}{'samples/s':>12}{'x llava15_labels':>18}")
    for name, value in results.items():
        print(f"{name:<24}{value:>12.0f}{value / baseline:>18.2f}")


if __name__ == "__main__":
    main()
