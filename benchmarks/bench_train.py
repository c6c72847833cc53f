"""Stage-2 training throughput at the 7B shape, SQ-LLaVA next to transformers' LLaVA-1.5 + PEFT, in the same run.

Random weights (nothing is downloaded): CLIP ViT-L/14-336 + Llama-7B (Vicuna-7B shapes, vocabulary 32,064), bf16
weights, SDPA attention, B=8 samples x 1,088 tokens (576 image tokens + 512 text tokens, all text tokens labelled),
a plain PyTorch loop (no autocast) with AdamW over the trainable parameters. LoRA as in
`recipes/configs/sqllava-7b/finetune.yaml`: LLM r=128/alpha=256/dropout=0.05 on q,k,v,o,gate,up,down; ViT
r=32/alpha=64/dropout=0.2 on q,k,v,out_proj,fc1,fc2; the projector trained in full. Each configuration runs with and
without gradient checkpointing; the baseline is `LlavaForConditionalGeneration` built from the same sub-configs with
the same adapter. Prints tokens/s, step time, peak memory, and SQ-LLaVA / LLaVA ratios.

    python benchmarks/bench_train.py                    # needs a CUDA GPU with ~100 GB for the no-checkpointing rows
    python benchmarks/bench_train.py --steps 3 --no-nockpt   # a quick look on a smaller card
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

VISION_7B = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
    hidden_act="quick_gelu",
)
TEXT_7B = dict(
    vocab_size=32064,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
IMAGE_TOKEN_ID = 32000


def build_model(kind: str, projector_type: str, device: str = "cuda", smoke: bool = False):
    from transformers import CLIPVisionConfig, LlamaConfig

    vision, text = CLIPVisionConfig(**VISION_7B), LlamaConfig(**TEXT_7B)
    if smoke:  # same code paths at a CPU-sized width, to check the script itself before spending GPU time
        vision = CLIPVisionConfig(
            **{
                **VISION_7B,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 3,
                "num_attention_heads": 4,
            }
        )
        text = LlamaConfig(
            **{
                **TEXT_7B,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 4,
            }
        )
    if kind == "llava":
        from transformers import LlavaConfig, LlavaForConditionalGeneration

        config = LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=IMAGE_TOKEN_ID,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        cls = LlavaForConditionalGeneration
    else:
        from modeling_sqllava import SQLlavaConfig, SQLlavaForConditionalGeneration

        config = SQLlavaConfig(
            vision_config=vision.to_dict(),
            text_config=text.to_dict(),
            image_token_id=IMAGE_TOKEN_ID,
            projector_type=projector_type,
        )
        cls = SQLlavaForConditionalGeneration
    config._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = cls(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def add_lora(model, lora_dtype: str):
    from peft import get_peft_model

    from recipes.common import ModelArguments, apply_vision_lora_dropout, build_lora_config

    args = ModelArguments(
        lora_r=128,
        lora_alpha=256,
        lora_dropout=0.05,
        vision_lora_r=32,
        vision_lora_alpha=64,
        vision_lora_dropout=0.2,
        lora_dtype=lora_dtype,
    )
    model.requires_grad_(False)
    model = get_peft_model(
        model,
        build_lora_config(args, modules_to_save=["multi_modal_projector"]),
        autocast_adapter_dtype=lora_dtype == "float32",
    )
    apply_vision_lora_dropout(model, args.vision_lora_dropout)
    return model


def make_batch(batch: int, text_tokens: int, image_tokens: int, device):
    g = torch.Generator().manual_seed(0)
    text = torch.randint(3, 32000, (batch, text_tokens), generator=g)
    image = torch.full((batch, image_tokens), IMAGE_TOKEN_ID)
    input_ids = torch.cat([text[:, :1], image, text[:, 1:]], dim=1)  # BOS, <image> x 576, text
    labels = input_ids.masked_fill(input_ids == IMAGE_TOKEN_ID, -100)
    labels[:, 0] = -100
    pixel_values = torch.randn(batch, 3, 336, 336, generator=g)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "pixel_values": pixel_values.to(device, torch.bfloat16),
        "labels": labels.to(device),
    }


def run_config(
    kind: str,
    *,
    checkpointing: bool,
    lora_dtype: str,
    projector_type: str,
    batch: dict,
    warmup: int,
    steps: int,
    device: str = "cuda",
    smoke: bool = False,
) -> dict:
    cuda = device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = add_lora(build_model(kind, projector_type, device, smoke), lora_dtype)
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=cuda)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = []
    for step in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    tokens = batch["input_ids"].numel()
    result = {
        "model": kind,
        "checkpointing": checkpointing,
        "lora_dtype": lora_dtype,
        "projector": projector_type,
        "step_s": statistics.median(times),
        "tokens_per_s": tokens / statistics.median(times),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "loss": float(loss),
        "trainable_params": sum(p.numel() for p in params),
    }
    del model, optimizer, params, loss
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-nockpt", action="store_true", help="skip the rows without gradient checkpointing")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--smoke", action="store_true", help="tiny widths on the CPU: checks the script, no timings")
    args = parser.parse_args(argv)
    device = "cpu" if args.smoke else "cuda"
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("bench_train.py measures the 7B shape and needs a CUDA GPU (or --smoke on a CPU).")
    torch.backends.cuda.matmul.allow_tf32 = True
    import transformers

    batch = make_batch(args.batch, args.text_tokens, 576, device)
    plan = [("llava", True, "float32"), ("sqllava", True, "float32"), ("sqllava", True, "auto")]
    if not args.no_nockpt:
        plan += [("llava", False, "float32"), ("sqllava", False, "float32")]
    rows = []
    for kind, ckpt, lora_dtype in plan:
        row = run_config(
            kind,
            checkpointing=ckpt,
            lora_dtype=lora_dtype,
            projector_type="prototype",
            batch=batch,
            warmup=args.warmup,
            steps=args.steps,
            device=device,
            smoke=args.smoke,
        )
        rows.append(row)
        print(json.dumps(row), flush=True)

    def find(kind, ckpt, lora_dtype="float32"):
        return next(
            (r for r in rows if (r["model"], r["checkpointing"], r["lora_dtype"]) == (kind, ckpt, lora_dtype)), None
        )

    device_name = torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke)"
    print(f"\n{device_name} | torch {torch.__version__} | transformers {transformers.__version__}")
    print("| configuration | tokens/s | step s | peak GiB | vs LLaVA (same settings) |")
    print("|---|---|---|---|---|")
    for r in rows:
        base = find("llava", r["checkpointing"])
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.3f}" if base and r is not base else "1 (baseline)"
        label = (
            f"{'LLaVA-1.5' if r['model'] == 'llava' else 'SQ-LLaVA'} + PEFT, "
            f"{'checkpointing' if r['checkpointing'] else 'no checkpointing'}, adapters "
            f"{'fp32' if r['lora_dtype'] == 'float32' else 'bf16'}"
        )
        print(f"| {label} | {r['tokens_per_s']:,.0f} | {r['step_s']:.3f} | {r['peak_gib']:.1f} | {ratio} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": device_name,
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "rows": rows,
                },
                f,
                indent=2,
            )
    return rows


if __name__ == "__main__":
    main()
