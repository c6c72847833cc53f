"""Benchmark vLLM serving an SQ-LLaVA folder against `model.generate`, measured in the same run.

Greedy generation of `--max-new-tokens` tokens (EOS masked on both sides: `min_new_tokens` / `min_tokens`) for one
image + the LLaVA-1.5 single-turn prompt, at batch 1 and 16 (16 different images, one `generate` call with the
batch vs 16 requests submitted to `vllm.LLM.generate` at once). Reported: generated tokens/s of each and the ratio
vLLM / generate, plus whether vLLM's greedy tokens equal generate's. vLLM runs with prefix caching and its
multi-modal preprocessing cache off, so repeated timings measure generation, not cache hits (distinct images are
used anyway). `generate` runs first and is freed before vLLM starts.

Shapes (random weights, nothing downloaded; the tiny tokenizer of recipes/tiny.py, so the text part is short):
- `tiny` (default, CPU): the model of tests/test_vllm.py (text head_dim 32, which vLLM's CPU attention supports);
- `7b` (GPU): CLIP ViT-L/14-336 (24 layers, 576 image tokens) + a Llama-2-7B-shaped text model (32 layers, 4096
  wide, 32 heads, 32,064 embedding rows), bfloat16.

Runs in an environment with vLLM (CPU: the CI's `.ci-venv-vllm`, see .ci/run; GPU: `pip install vllm==0.32.0` with
its CUDA torch, plus `pip install -e .`). The `__main__` guard matters: vLLM spawns its engine processes.

Usage:
    .ci-venv-vllm/bin/python benchmarks/bench_vllm.py                                    # tiny, CPU
    .ci-venv-vllm/bin/python benchmarks/bench_vllm.py --write-folder outputs/vllm-tiny   # just the folder, to serve
    python benchmarks/bench_vllm.py --shape 7b --device cuda --max-new-tokens 128         # 7B shape, one GPU
    python benchmarks/bench_vllm.py --folder outputs/sqllava-7b-merged --device cuda      # an exported folder
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

TINY_TEXT = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2}


def build_folder(shape: str, output: Path, device: str) -> Path:
    """Write a random SQ-LLaVA of `shape` with `hub_upload.export.write_export_folder` (what an export holds)."""
    import torch

    from hub_upload.export import write_export_folder
    from modeling_sqllava import SQLlavaConfig, SQLlavaForConditionalGeneration
    from recipes.tiny import TINY_TEXT_CONFIG, TINY_VISION_CONFIG, build_tiny_processor, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    if shape == "tiny":
        vision, text, image_size, num_prototypes = dict(TINY_VISION_CONFIG), dict(TINY_TEXT_CONFIG, **TINY_TEXT), 56, 6
        vocab_size, dtype = -(-len(tokenizer) // 64) * 64, "float32"
    else:
        from benchmarks.bench_train import TEXT_7B, VISION_7B

        vision, text, image_size, num_prototypes = dict(VISION_7B), dict(TEXT_7B), 336, 256
        vocab_size, dtype = TEXT_7B["vocab_size"], "bfloat16"
    text.update(vocab_size=vocab_size, pad_token_id=tokenizer.pad_token_id, bos_token_id=1, eos_token_id=2)
    text["head_dim"] = text["hidden_size"] // text["num_attention_heads"]
    config = SQLlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        num_prototypes=num_prototypes,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = SQLlavaForConditionalGeneration(config).eval()
    processor = build_tiny_processor(tokenizer, image_size=image_size)
    write_export_folder(model, processor, output, dtype=dtype)
    del model
    return output


def make_images(count: int, seed: int):
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) for _ in range(count)]


def prompt_for(processor) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def bench_generate(folder: Path, args, batches: dict[int, list]) -> dict:
    """`model.generate` tokens/s per batch size (median of `--repeats`) and the batch-1 tokens."""
    import torch

    from modeling_sqllava import SQLlavaForConditionalGeneration
    from processing import SQLlavaProcessor

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    processor = SQLlavaProcessor.from_pretrained(folder, trust_remote_code=False)  # the package's classes
    model = SQLlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(args.device).eval()
    prompt = prompt_for(processor)
    results, first_tokens = {}, None
    for batch_size, images in batches.items():
        inputs = processor(text=[prompt] * batch_size, images=images, padding=True, padding_side="left",
                           return_tensors="pt").to(args.device)  # fmt: skip
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        times = []
        for repeat in range(args.repeats + 1):  # the first run warms up
            sync(args.device)
            start = time.perf_counter()
            with torch.no_grad():
                output = model.generate(**inputs, do_sample=False, max_new_tokens=args.max_new_tokens,
                                        min_new_tokens=args.max_new_tokens)  # fmt: skip
            sync(args.device)
            if repeat:
                times.append(time.perf_counter() - start)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        if batch_size == 1:
            first_tokens = new_tokens[0].tolist()
        results[batch_size] = new_tokens.numel() / statistics.median(times)
    del model
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return {"tokens_per_s": results, "batch1_tokens": first_tokens, "prompt": prompt}


def bench_vllm(folder: Path, args, batches: dict[int, list], prompt: str) -> dict:
    """vLLM's tokens/s, in a child process of its own: vLLM's engine processes then start from a process that ran
    no torch work and always stop with it (an engine left behind by an in-process `LLM` blocked the exit here)."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        spec = {"folder": str(folder), "args": vars(args), "prompt": prompt, "batch_sizes": list(batches)}
        Path(tmp, "spec.json").write_text(json.dumps(spec))
        command = [sys.executable, str(Path(__file__).resolve()), "--vllm-child", str(Path(tmp, "spec.json"))]
        subprocess.run(command, check=True, timeout=3600)
        result = json.loads(Path(tmp, "spec.json.out").read_text())
    result["tokens_per_s"] = {int(size): value for size, value in result["tokens_per_s"].items()}
    return result


def vllm_child(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    args = argparse.Namespace(**spec["args"])
    batches = {size: make_images(size, seed=size) for size in spec["batch_sizes"]}
    result = run_vllm(Path(spec["folder"]), args, batches, spec["prompt"])
    Path(spec_path + ".out").write_text(json.dumps(result))


def run_vllm(folder: Path, args, batches: dict[int, list], prompt: str) -> dict:
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(folder),
        model_impl="transformers",
        trust_remote_code=True,
        enforce_eager=args.device == "cpu",
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        limit_mm_per_prompt={"image": 1},
        enable_prefix_caching=False,
        mm_processor_cache_gb=0,
        seed=0,
        **({"gpu_memory_utilization": args.gpu_memory_utilization} if args.device == "cuda" else {}),
    )
    params = SamplingParams(temperature=0.0, max_tokens=args.max_new_tokens, min_tokens=args.max_new_tokens)
    results, first_tokens = {}, None
    for batch_size, images in batches.items():
        requests = [{"prompt": prompt, "multi_modal_data": {"image": image}} for image in images]
        times = []
        for repeat in range(args.repeats + 1):
            start = time.perf_counter()
            outputs = llm.generate(requests, params, use_tqdm=False)
            if repeat:
                times.append(time.perf_counter() - start)
        if batch_size == 1:
            first_tokens = list(outputs[0].outputs[0].token_ids)
        results[batch_size] = sum(len(o.outputs[0].token_ids) for o in outputs) / statistics.median(times)
    llm.llm_engine.engine_core.shutdown()
    return {"tokens_per_s": results, "batch1_tokens": first_tokens}


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--shape", choices=["tiny", "7b"], default="tiny")
    parser.add_argument("--folder", default=None, help="Benchmark this exported folder instead of a random one.")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="Default: float32 for tiny on CPU, bfloat16 otherwise.")  # fmt: skip
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=None, help="Default: 256 (tiny) or 2048.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.6)
    parser.add_argument("--json", default=None, help="Also write the results to this JSON file.")
    parser.add_argument(
        "--write-folder", default=None, help="Only write the random model folder of --shape here (to serve it), exit."
    )
    parser.add_argument("--vllm-child", default=None, help=argparse.SUPPRESS)  # bench_vllm's child process
    args = parser.parse_args()
    if args.vllm_child:
        vllm_child(args.vllm_child)
        return
    if args.write_folder:
        build_folder(args.shape, Path(args.write_folder), args.device)
        print(f"Wrote a random {args.shape} SQ-LLaVA to {args.write_folder}")
        return
    args.dtype = args.dtype or ("float32" if args.shape == "tiny" and args.device == "cpu" else "bfloat16")
    args.max_model_len = args.max_model_len or (256 if args.shape == "tiny" and not args.folder else 2048)
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    if args.device == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder) if args.folder else build_folder(args.shape, Path(tmp) / "model", args.device)
        batches = {size: make_images(size, seed=size) for size in args.batch_sizes}
        generate = bench_generate(folder, args, batches)
        vllm = bench_vllm(folder, args, batches, generate["prompt"])

    import torch
    import transformers
    import vllm as vllm_module

    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"\n## bench_vllm ({args.folder or args.shape}, {device}, {args.dtype})\n")
    print(f"vLLM {vllm_module.__version__}, transformers {transformers.__version__}, torch {torch.__version__}; "
          f"{args.max_new_tokens} new tokens per sequence, median of {args.repeats}.\n")  # fmt: skip
    print("| batch | generate tokens/s | vLLM tokens/s | vLLM / generate |")
    print("|---|---|---|---|")
    for size in args.batch_sizes:
        ours, theirs = vllm["tokens_per_s"][size], generate["tokens_per_s"][size]
        print(f"| {size} | {theirs:,.1f} | {ours:,.1f} | {ours / theirs:.2f}x |")
    same = vllm["batch1_tokens"] == generate["batch1_tokens"]
    print(f"\nBatch-1 greedy tokens equal generate's: {'yes' if same else 'no'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "generate": generate, "vllm": vllm}, indent=2))


if __name__ == "__main__":
    main()
