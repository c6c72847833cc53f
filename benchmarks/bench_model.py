"""Benchmark the SQ-LLaVA model against transformers' own LLaVA, measured in the same run.

1. Train step (forward + backward, PEFT LoRA on both towers, projector trained) of `SQLlavaForConditionalGeneration`
   vs `LlavaForConditionalGeneration` built from the same CLIP and Llama sub-configs, at a CPU-sized shape.
   Targets: time ratio <= 1.05 with the "mlp2x_gelu" projector, <= 1.10 with "prototype".
2. The prototype extractor alone (forward + backward) vs a straightforward formulation that materialises
   (B, K, L, D) products, at L=576, K=256: time and peak memory. Targets: >= 2x faster, >= 5x less peak memory.
   Peak memory: on CUDA, `torch.cuda.max_memory_allocated` above what the inputs and weights hold. On CPU (no
   allocator statistics), a `TorchDispatchMode` sums the bytes of every tensor storage created by an ATen op during
   forward + backward while it is alive (freed when its first tensor is collected), which gives the peak of
   intermediate memory (approximate: a storage still shared by a view when its first tensor dies counts as freed); it
   also reports the largest single intermediate. Timed runs of the two variants are interleaved.

Usage:
    python benchmarks/bench_model.py                 # CPU, writes nothing
    python benchmarks/bench_model.py --device cuda --vision-hidden 1024 --text-hidden 2048   # a GPU run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import weakref
from pathlib import Path

import torch
from torch.nn import functional

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


# ------------------------------------------------------------------------------------------------ train-step ratio


def build_pair(args, projector_type: str):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from modeling_sqllava import SQLlavaConfig, SQLlavaForConditionalGeneration

    vision = {
        "hidden_size": args.vision_hidden,
        "intermediate_size": 4 * args.vision_hidden,
        "num_hidden_layers": args.vision_layers,
        "num_attention_heads": args.vision_hidden // 64,
        "image_size": args.image_size,
        "patch_size": 14,
        "hidden_act": "quick_gelu",
    }
    text = {
        "vocab_size": args.vocab,
        "hidden_size": args.text_hidden,
        "intermediate_size": int(2.6875 * args.text_hidden),
        "num_hidden_layers": args.text_layers,
        "num_attention_heads": args.text_hidden // 64,
        "num_key_value_heads": args.text_hidden // 64,
        "tie_word_embeddings": False,
    }
    image_token_id = args.vocab - 2
    torch.manual_seed(0)
    ours = SQLlavaForConditionalGeneration(
        SQLlavaConfig(
            vision_config=dict(vision),
            text_config=dict(text, pad_token_id=args.vocab - 1),
            image_token_id=image_token_id,
            projector_type=projector_type,
            num_prototypes=args.train_prototypes,
        )
    )
    llava = LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=CLIPVisionConfig(**vision),
            text_config=LlamaConfig(**text),
            image_token_index=image_token_id,
            image_seq_length=(args.image_size // 14) ** 2,
            projector_hidden_act="gelu",
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
    )
    return ours, llava, image_token_id


def with_lora(model):
    import peft

    target = (
        r".*vision_tower\..*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"
        r"|.*language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    )
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=target))
    for name, param in peft_model.named_parameters():
        if "multi_modal_projector" in name:
            param.requires_grad_(True)
    return peft_model


def train_step_ratio(args, projector_type: str) -> dict:
    device = torch.device(args.device)
    ours, llava, image_token_id = build_pair(args, projector_type)
    ours, llava = with_lora(ours).to(device).train(), with_lora(llava).to(device).train()
    num_image_tokens = (args.image_size // 14) ** 2
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(3, args.vocab - 2, (args.batch, args.text_tokens), generator=generator)
    input_ids = torch.cat(
        [text[:, :4], torch.full((args.batch, num_image_tokens), image_token_id), text[:, 4:]], dim=1
    ).to(device)
    labels = torch.where(input_ids == image_token_id, -100, input_ids)
    pixel_values = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=generator).to(device)

    def step(model):
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(input_ids=input_ids, pixel_values=pixel_values, labels=labels).loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        step(ours), step(llava)
    ours_times, llava_times = [], []
    for _ in range(args.repeats):  # interleaved, so that machine-load drift hits both alike
        ours_times.append(step(ours))
        llava_times.append(step(llava))
    ours_median, llava_median = statistics.median(ours_times), statistics.median(llava_times)
    return {
        "projector_type": projector_type,
        "sqllava_s": ours_median,
        "llava_s": llava_median,
        "ratio": ours_median / llava_median,
        # The fastest run of each is the least disturbed by other processes on a shared CPU.
        "ratio_min": min(ours_times) / min(llava_times),
    }


# ---------------------------------------------------------------------------------------------- extractor vs naive


def naive_extractor(extractor, x):
    """The equations with broadcasting: (B, K, L, D) products for the centre values and the enhanced tokens."""
    values = functional.normalize(extractor.v(x), dim=1)
    features = extractor.f(x)
    centers = functional.adaptive_avg_pool1d(x.transpose(1, 2), extractor.num_prototypes).transpose(1, 2)
    centers_features = functional.adaptive_avg_pool1d(features.transpose(1, 2), extractor.num_prototypes).transpose(
        1, 2
    )
    for _ in range(extractor.num_iterations):
        centers = extractor.c(centers)
        assignment = torch.softmax(functional.normalize(centers, dim=-1) @ values.transpose(1, 2), dim=1)
        centers = assignment @ features
    cosine = functional.normalize(centers, dim=-1) @ functional.normalize(x, dim=-1).transpose(1, 2)
    similarity = torch.sigmoid(extractor.sim_beta + extractor.sim_alpha * cosine)
    mask = torch.zeros_like(similarity).scatter_(1, similarity.argmax(dim=1, keepdim=True), 1.0)
    similarity = similarity * mask
    center_values = ((features.unsqueeze(1) * similarity.unsqueeze(-1)).sum(dim=2) + centers_features) / (
        mask.sum(dim=-1, keepdim=True) + 1.0
    )
    return x + (center_values.unsqueeze(2) * similarity.unsqueeze(-1)).sum(dim=1)


class LiveTensorBytes:
    """Peak bytes of tensor storages created by ATen ops (forward and backward) and alive at the same time."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for tensor in torch.utils._pytree.tree_leaves(out):
                    if isinstance(tensor, torch.Tensor):
                        tracker.track(tensor)
                return out

        self.mode = Mode()
        self.live = 0
        self.peak = 0
        self.largest = 0
        self.alive: set[int] = set()

    def track(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self.alive:  # views and in-place results share an already counted storage
            return
        self.alive.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        self.largest = max(self.largest, size)
        weakref.finalize(tensor, self.release, key, size)

    def release(self, key: int, size: int):
        if key in self.alive:
            self.alive.discard(key)
            self.live -= size


def extractor_comparison(args) -> dict:
    """Both variants in one process: interleaved timed runs (medians), then one memory-tracked run of each."""
    from modeling_sqllava import SQLlavaPrototypeExtractor

    device = torch.device(args.device)
    torch.manual_seed(0)
    extractor = SQLlavaPrototypeExtractor(args.dim, args.prototypes, 2).to(device)
    variants = {"matmul": extractor, "naive": lambda inputs: naive_extractor(extractor, inputs)}
    x = torch.randn(args.extractor_batch, args.tokens, args.dim, device=device, requires_grad=True)

    def step(run) -> float:
        x.grad = None
        extractor.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run(x).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for run in variants.values():  # warm-up
        step(run)
    times = {name: [] for name in variants}
    for _ in range(args.extractor_repeats):
        for name, run in variants.items():
            times[name].append(step(run))

    peaks, largest = {}, {}
    for name, run in variants.items():
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step(run)
            peaks[name], largest[name] = torch.cuda.max_memory_allocated() - base, None
        else:
            tracker = LiveTensorBytes()
            with tracker.mode:
                step(run)
            peaks[name], largest[name] = tracker.peak, tracker.largest
    return {
        "shape": f"B={args.extractor_batch} L={args.tokens} K={args.prototypes} D={args.dim}",
        "matmul_s": statistics.median(times["matmul"]),
        "naive_s": statistics.median(times["naive"]),
        "speedup": statistics.median(times["naive"]) / statistics.median(times["matmul"]),
        "speedup_min": min(times["naive"]) / min(times["matmul"]),
        "matmul_peak_mib": peaks["matmul"] / 2**20,
        "naive_peak_mib": peaks["naive"] / 2**20,
        "memory_ratio": peaks["naive"] / max(peaks["matmul"], 1),
        "matmul_largest_mib": (largest["matmul"] or 0) / 2**20,
        "naive_largest_mib": (largest["naive"] or 0) / 2**20,
    }


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    # Train-step shape (CPU-sized; the 7B shape is vision 1024x24 @ 336 px, text 4096x32).
    parser.add_argument("--vision-hidden", type=int, default=192)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224)  # 256 image tokens
    parser.add_argument("--text-hidden", type=int, default=384)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--train-prototypes", type=int, default=112)  # 256 tokens -> 112, as 576 -> 256
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    # Extractor shape: LLaVA-1.5's 576 tokens and 256 prototypes at CLIP-L width.
    parser.add_argument("--tokens", type=int, default=576)
    parser.add_argument("--prototypes", type=int, default=256)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--extractor-batch", type=int, default=1)
    parser.add_argument("--extractor-repeats", type=int, default=5)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, device {args.device}, threads {args.threads}")
    if not args.skip_train:
        import transformers

        print(
            f"train step (LoRA r=8 on both towers + projector, batch {args.batch}, {(args.image_size // 14) ** 2} image"
            f" + {args.text_tokens} text tokens, vision {args.vision_hidden}x{args.vision_layers}, text "
            f"{args.text_hidden}x{args.text_layers}; transformers {transformers.__version__}; median of {args.repeats})"
        )
        for projector_type in ("mlp2x_gelu", "prototype"):
            result = train_step_ratio(args, projector_type)
            target = 1.05 if projector_type == "mlp2x_gelu" else 1.10
            print(
                f"  {projector_type:<11} sqllava {result['sqllava_s'] * 1e3:8.1f} ms  llava {result['llava_s'] * 1e3:8.1f}"
                f" ms  ratio {result['ratio']:.3f} (min-based {result['ratio_min']:.3f}; target <= {target})"
            )
    result = extractor_comparison(args)
    peak_method = "cuda.max_memory_allocated" if args.device == "cuda" else "live intermediate tensor bytes"
    print(f"extractor forward+backward, {result['shape']} (median of {args.extractor_repeats}; peak = {peak_method})")
    print(
        f"  matmul {result['matmul_s'] * 1e3:8.1f} ms, peak {result['matmul_peak_mib']:8.1f} MiB, largest tensor "
        f"{result['matmul_largest_mib']:7.1f} MiB\n"
        f"  naive  {result['naive_s'] * 1e3:8.1f} ms, peak {result['naive_peak_mib']:8.1f} MiB, largest tensor "
        f"{result['naive_largest_mib']:7.1f} MiB\n"
        f"  speedup {result['speedup']:.2f}x (min-based {result['speedup_min']:.2f}x; target >= 2), "
        f"memory ratio {result['memory_ratio']:.1f}x (target >= 5)"
    )


if __name__ == "__main__":
    main()
