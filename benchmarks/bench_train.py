"""Stage-2 training throughput at the 7B shape, SQ-LLaVA next to transformers' LLaVA-1.5 + PEFT, in the same run.

Two modes, each configuration a row, all rows of a mode measured in the same run:

- `--mode loop` (default): the models alone in a hand-written loop on fixed-length batches (below).
- `--mode recipe`: what a user runs. SQ-LLaVA rows go through `recipes/finetune.py`'s code path: the 7B YAML
  (`recipes/configs/sqllava-7b/finetune.yaml`, overridden per row), `add_stage2_adapters`, `SQLlavaTrainer` with its
  self-questioning collator and the YAML's dataloader workers. The baseline row is LLaVA-1.5
  (`LlavaForConditionalGeneration`) + PEFT through TRL's own `SFTTrainer` with `bf16=True` and TRL's vision
  collator, same LoRA, same data. Data: synthetic conversations with LLaVA-665K's mix of lengths
  (`benchmarks/bench_collator.py`; with the real Llama vocabulary, `$SQLLAVA_FIXTURES`, about 860 tokens per sample
  of which 576 image tokens, a tail to 2,048), 640x480 JPEG files read by the workers. Each row reports real
  (non-padding) tokens/s, the padding fraction of its batches, peak memory and the projector's share of the step time
  (CUDA events around its forward and backward), and the ratio to the baseline. `--smoke` runs the same rows at tiny
  widths on a CPU (a few steps): the script is checked, and the padding fraction and the padded-vs-packed token ratio
  are those of the real data; CPU timings there say nothing about a GPU.

Loop mode: random weights (nothing is downloaded): CLIP ViT-L/14-336 + Llama-7B (Vicuna-7B shapes, vocabulary
32,064), bf16 weights, SDPA attention, B=8 samples x 1,088 tokens (576 image tokens + 512 text tokens, all text tokens
labelled), a plain PyTorch loop (no autocast) with AdamW over the trainable parameters. LoRA as in
`recipes/configs/sqllava-7b/finetune.yaml`: LLM r=128/alpha=256/dropout=0.05 on q,k,v,o,gate,up,down; ViT
r=32/alpha=64/dropout=0.2 on q,k,v,out_proj,fc1,fc2; the projector trained in full. Each configuration runs with and
without gradient checkpointing; the baseline is `LlavaForConditionalGeneration` built from the same sub-configs with
the same adapter. Prints tokens/s, step time, peak memory, and SQ-LLaVA / LLaVA ratios.

    python benchmarks/bench_train.py                    # needs a CUDA GPU with ~100 GB for the no-checkpointing rows
    python benchmarks/bench_train.py --steps 3 --no-nockpt   # a quick look on a smaller card
    python benchmarks/bench_train.py --mode recipe --json recipe.json            # one H100/H200 (rows: --rows)
    python benchmarks/bench_train.py --mode recipe --smoke                       # CPU, tiny widths
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


def build_model(
    kind: str,
    projector_type: str,
    device: str = "cuda",
    smoke: bool = False,
    image_token_id: int = 32000,
    pad_token_id: int | None = None,
    attn_implementation: str = "sdpa",
):
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
            image_token_index=image_token_id,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        cls = LlavaForConditionalGeneration
    else:
        from modeling_sqllava import SQLlavaConfig, SQLlavaForConditionalGeneration

        config = SQLlavaConfig(
            vision_config=vision.to_dict(),
            text_config=text.to_dict(),
            image_token_id=image_token_id,
            projector_type=projector_type,
            **({} if pad_token_id is None else {"pad_token_id": pad_token_id}),
        )
        cls = SQLlavaForConditionalGeneration
    if pad_token_id is not None:
        config.text_config.pad_token_id = pad_token_id
    config._attn_implementation = attn_implementation
    if hasattr(config, "vision_config") and kind == "sqllava":
        config.vision_config._attn_implementation = "sdpa"  # the vision tower has no padding: SDPA in every row
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = cls(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def add_lora(model, lora_dtype: str):
    """Stage 2's adapters exactly as recipes/finetune.py adds them, with the 7B recipe's ranks and dropouts."""
    from recipes.common import ModelArguments
    from recipes.finetune import add_stage2_adapters

    args = ModelArguments(
        lora_r=128,
        lora_alpha=256,
        lora_dropout=0.05,
        vision_lora_r=32,
        vision_lora_alpha=64,
        vision_lora_dropout=0.2,
        lora_dtype=lora_dtype,
    )
    return add_stage2_adapters(model, args)


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
    parser.add_argument("--mode", choices=["loop", "recipe"], default="loop")
    parser.add_argument("--rows", nargs="+", default=None, help=f"recipe mode: rows among {sorted(RECIPE_ROWS)}")
    parser.add_argument("--samples", type=int, default=None, help="recipe mode: conversations (default 768, smoke 48)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-nockpt", action="store_true", help="skip the rows without gradient checkpointing")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--smoke", action="store_true", help="tiny widths on the CPU: checks the script, no timings")
    args = parser.parse_args(argv)
    if args.mode == "recipe":
        return run_recipe_mode(args)
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


# ---- recipe mode ----

# name: (model, overrides of the 7B finetune YAML). "ckpt" is gradient_checkpointing_every_n_layers (0: off).
RECIPE_ROWS = {
    "trl-llava": {"model": "llava", "ckpt": 1, "lora_dtype": "float32"},
    "sqllava-fp32-ckpt": {"model": "sqllava", "ckpt": 1, "lora_dtype": "float32"},
    "sqllava-ckpt": {"model": "sqllava", "ckpt": 1},
    "sqllava-ckpt2": {"model": "sqllava", "ckpt": 2},
    "sqllava-nockpt": {"model": "sqllava", "ckpt": 0},
    "sqllava-packed-ckpt": {"model": "sqllava", "ckpt": 1, "padding_free": True},
    "sqllava-packed-ckpt2": {"model": "sqllava", "ckpt": 2, "padding_free": True},
    "sqllava-packed-nockpt": {"model": "sqllava", "ckpt": 0, "padding_free": True},
    "sqllava-packed-liger-ckpt2": {"model": "sqllava", "ckpt": 2, "padding_free": True, "liger": True},
}
DEFAULT_RECIPE_ROWS = [
    "trl-llava", "sqllava-fp32-ckpt", "sqllava-ckpt", "sqllava-ckpt2", "sqllava-nockpt", "sqllava-packed-ckpt2",
    "sqllava-packed-liger-ckpt2",
]  # fmt: skip
SMOKE_ROWS = ["trl-llava", "sqllava-fp32-ckpt", "sqllava-ckpt", "sqllava-ckpt2", "sqllava-packed-ckpt2"]
VICUNA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}"
    "{% endif %}{% endfor %} {% else %}ASSISTANT: {{ message['content'][0]['text'] }}</s>{% endif %}{% endfor %}"
)


def recipe_data(n: int, seed: int, folder: Path):
    """LLaVA-665K-like records (bench_collator's mix) whose images are 640x480 JPEG files under `folder`."""
    from benchmarks.bench_collator import llava665k_like_records

    records = llava665k_like_records(n, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for record in records:
        for i, image in enumerate(record["images"]):
            key = id(image)
            if key not in paths:
                paths[key] = str(folder / f"image_{len(paths)}.jpg")
                image.save(paths[key], quality=90)
            record["images"][i] = paths[key]
    return records


def _llava_processor(sq_processor):
    """transformers' `LlavaProcessor` on the same tokenizer and image preprocessing (576 image tokens at 336 px)."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    size = sq_processor.image_processor.crop_size["height"]
    patch = 14
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=sq_processor.tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=VICUNA_TEMPLATE,
        image_token="<image>",
    )


class _StepTimer:
    """Trainer callback: wall time of each optimizer step (device synchronised at its edges) after `warmup` steps;
    `on_measured_step(bool)` is told at each step start whether the step is measured."""

    def __new__(cls, warmup: int, sync, on_measured_step):
        from transformers import TrainerCallback

        class StepTimer(TrainerCallback):
            def __init__(self):
                self.times: list[float] = []

            def on_step_begin(self, args, state, control, **kwargs):
                on_measured_step(state.global_step >= warmup)
                sync()
                self.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                sync()
                if state.global_step > warmup:
                    self.times.append(time.perf_counter() - self.start)

        return StepTimer()


class _ModuleTimer:
    """Time spent in a module's forward and backward: CUDA events on a GPU, perf_counter on a CPU (no sync)."""

    def __init__(self, module: torch.nn.Module, cuda: bool):
        self.cuda, self.spans, self.active = cuda, [], False
        self._open: dict[str, object] = {}
        module.register_forward_pre_hook(lambda m, a: self._start("fwd"))
        module.register_forward_hook(lambda m, a, o: self._stop("fwd"))
        module.register_full_backward_pre_hook(lambda m, g: self._start("bwd"))
        module.register_full_backward_hook(lambda m, gi, go: self._stop("bwd"))

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _start(self, key):
        if self.active:
            self._open[key] = self._mark()

    def _stop(self, key):
        if self.active and key in self._open:
            self.spans.append((self._open.pop(key), self._mark()))

    def seconds(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return sum(a.elapsed_time(b) for a, b in self.spans) / 1000.0
        return sum(b - a for a, b in self.spans)


def _token_counting(trainer_cls):
    """`trainer_cls` whose training steps add real (non-padding) and padded token counts to device counters."""

    class Counting(trainer_cls):
        counting = False

        def training_step(self, model, inputs, num_items_in_batch=None):
            if self.counting:
                ids = inputs["input_ids"]
                real = inputs["attention_mask"].sum() if "attention_mask" in inputs else ids.new_tensor(ids.numel())
                self.real_tokens = getattr(self, "real_tokens", 0) + real
                self.positions = getattr(self, "positions", 0) + ids.numel()
            return super().training_step(model, inputs, num_items_in_batch)

    return Counting


def _recipe_args(row: dict, output_dir: str, smoke: bool, steps: int, attn: str):
    """The 7B finetune YAML through finetune.py's parser, overridden for the row and the benchmark's budget."""
    from recipes import finetune

    config = REPO_ROOT / "recipes" / "configs" / "sqllava-7b" / "finetune.yaml"
    overrides = {
        "data_path": "unused.json",
        "output_dir": output_dir,
        "max_steps": steps,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": "true",
        "attn_implementation": attn,
        "gradient_checkpointing": str(row["ckpt"] > 0).lower(),
        "gradient_checkpointing_every_n_layers": max(row["ckpt"], 1),
        "padding_free": str(row.get("padding_free", False)).lower(),
        "liger_kernels": str(row.get("liger", False)).lower(),
        "lora_dtype": row.get("lora_dtype", "auto"),
    }
    if smoke:
        overrides.update(
            {"bf16": "false", "tf32": "false", "use_cpu": "true", "dtype": "float32", "per_device_train_batch_size": 4,
             "dataloader_num_workers": 0}
        )  # fmt: skip
    argv = ["--config", str(config)]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    model_args, data_args, training_args, _ = finetune.parse_args(argv)
    return model_args, data_args, training_args


def run_recipe_row(name: str, row: dict, records, sq_processor, *, smoke: bool, warmup: int, steps: int, workdir):
    import datasets

    from recipes.data import ConversationDataset
    from recipes.finetune import add_stage2_adapters
    from recipes.trainer import SQLlavaTrainer

    cuda = not smoke
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    attn = "sdpa"
    if row.get("padding_free"):
        from transformers.utils import is_flash_attn_2_available

        # Packed rows need varlen attention to pay off (SDPA computes the whole packed row's N x N scores).
        attn = "flash_attention_2" if cuda and is_flash_attn_2_available() else "sdpa"
    model_args, _, training_args = _recipe_args(row, str(workdir / name), smoke, warmup + steps, attn)
    tokenizer = sq_processor.tokenizer
    model = build_model(
        row["model"], "prototype", "cuda" if cuda else "cpu", smoke,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), pad_token_id=tokenizer.pad_token_id,
        attn_implementation=attn,
    )  # fmt: skip
    if smoke:
        model = model.float()
    state = {}

    def on_measured_step(measured: bool):
        state["trainer"].counting = state["projector"].active = measured

    timer = _StepTimer(warmup, sync, on_measured_step)
    # Both models get the recipe's stage-2 adapters (the baseline row asks for PEFT's float32 adapters).
    model = add_stage2_adapters(model, model_args)
    if row["model"] == "sqllava":
        trainer_cls = _token_counting(SQLlavaTrainer)
        trainer = trainer_cls(
            model=model,
            args=training_args,
            train_dataset=ConversationDataset(records),
            processing_class=sq_processor,
            group_by_modality_length=True,  # as the YAML's `group_by_modality_length: true`
            callbacks=[timer],
        )
    else:
        from trl import SFTConfig, SFTTrainer

        # TRL's format: the image placeholder is added by TRL before the first user message.
        rows = [
            {
                "images": list(r["images"]),
                "messages": [{**m, "content": m["content"].replace("<image>\n", "")} for m in r["messages"]],
            }
            for r in records
        ]
        dataset = datasets.Dataset.from_list(rows).cast_column("images", datasets.Sequence(datasets.Image()))
        keys = ("output_dir", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
                "lr_scheduler_type", "warmup_steps", "max_length", "bf16", "tf32", "use_cpu", "gradient_checkpointing",
                "gradient_checkpointing_kwargs", "dataloader_num_workers", "logging_steps", "save_strategy",
                "report_to", "seed", "max_steps", "disable_tqdm")  # fmt: skip
        config = SFTConfig(**{k: getattr(training_args, k) for k in keys})
        trainer_cls = _token_counting(SFTTrainer)
        trainer = trainer_cls(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=_llava_processor(sq_processor),
            callbacks=[timer],
        )
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    projector = _ModuleTimer(base.model.multi_modal_projector, cuda)
    state.update(trainer=trainer, projector=projector)
    trainer.train()
    step_s = statistics.median(timer.times)
    total_s = sum(timer.times)
    real = float(trainer.real_tokens)
    positions = float(trainer.positions)
    result = {
        "row": name,
        "model": row["model"],
        "attn": attn,
        "padding_free": bool(row.get("padding_free")),
        "checkpoint_every_n_layers": row["ckpt"],
        "lora_dtype": model_args.lora_dtype if row["model"] == "sqllava" else "float32",
        "liger": bool(row.get("liger")),
        "step_s": step_s,
        "real_tokens_per_s": real / total_s,
        "padding_fraction": 1.0 - real / positions,
        "positions_per_real_token": positions / real,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "projector_share": projector.seconds() / total_s,
        "steps_timed": len(timer.times),
    }
    state.clear()
    del trainer, model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def padding_of_batches(records, processor, *, batch_size: int, world_size: int, seed: int = 0) -> dict:
    """Padding of the recipe's batches from the token counts alone (no model): LLaVA's length grouping
    (`group_by_modality_length`, `world_size` chunks per megabatch as with that many GPUs) and random order, against
    packed batches, which have none. The fractions depend on the data and the batching only: they hold on any machine.
    """
    import random

    from recipes.collator import SelfQuestioningCollator
    from recipes.data import ConversationDataset, ModalityLengthGroupedSampler

    dataset = ConversationDataset(records)
    collator = SelfQuestioningCollator(processor, sq_ratio=0.5, seed=seed, max_length=2048)
    lengths = [len(collator._encode(dataset[i])[0]) for i in range(len(dataset))]
    grouped = list(ModalityLengthGroupedSampler(dataset.modality_lengths, batch_size, world_size, seed=seed))
    shuffled = list(range(len(dataset)))
    random.Random(seed).shuffle(shuffled)
    result = {"tokens_per_sample": statistics.mean(lengths)}
    for name, order in (("grouped", grouped), ("random", shuffled)):
        real = positions = 0
        for start in range(0, len(order) - batch_size + 1, batch_size):
            batch = [lengths[i] for i in order[start : start + batch_size]]
            real += sum(batch)
            positions += len(batch) * -(-max(batch) // 8) * 8  # padded to the longest, rounded to 8 as the recipe
        result[f"padding_fraction_{name}"] = 1.0 - real / positions
        result[f"positions_per_real_token_{name}"] = positions / real
    return result


def run_recipe_mode(args):
    import tempfile

    import transformers

    from benchmarks.bench_collator import build_processor

    smoke = args.smoke
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("--mode recipe measures the 7B shape on a CUDA GPU (or --smoke on a CPU).")
    if smoke:
        torch.set_num_threads(1)
    names = args.rows or (SMOKE_ROWS if smoke else DEFAULT_RECIPE_ROWS)
    unknown = sorted(set(names) - set(RECIPE_ROWS))
    if unknown:
        raise SystemExit(f"Unknown rows {unknown}; choose among {sorted(RECIPE_ROWS)}.")
    sq_processor, vocabulary = build_processor()
    warmup, steps = (1, 2) if smoke else (args.warmup, args.steps)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        records = recipe_data(args.samples or (12 if smoke else 768), 0, Path(tmp) / "images")
        lengths = sorted(len(sq_processor.tokenize_conversation(r["messages"])["input_ids"]) for r in records)
        mean = statistics.mean(lengths)
        print(
            f"data: {len(records)} conversations, {vocabulary}; tokens per sample mean {mean:.0f}, "
            f"median {lengths[len(lengths) // 2]}, max {lengths[-1]}",
            flush=True,
        )
        # The 7B recipe's batching (16 per GPU, 8 GPUs), from the token counts of a larger sample of the same data.
        padding = padding_of_batches(
            records if len(records) >= 1024 else recipe_data(2048, 1, Path(tmp) / "images_padding"),
            sq_processor, batch_size=16, world_size=8,
        )  # fmt: skip
        print(
            "padding of the 7B recipe's batches (16 per GPU x 8 GPUs; packed batches: 0%): "
            f"length-grouped {padding['padding_fraction_grouped']:.1%} "
            f"({padding['positions_per_real_token_grouped']:.3f} positions per real token), random order "
            f"{padding['padding_fraction_random']:.1%} ({padding['positions_per_real_token_random']:.3f})",
            flush=True,
        )
        for name in names:
            try:
                row = run_recipe_row(
                    name, RECIPE_ROWS[name], records, sq_processor, smoke=smoke, warmup=warmup, steps=steps,
                    workdir=Path(tmp),
                )  # fmt: skip
            except (torch.cuda.OutOfMemoryError, ImportError, ValueError) as error:
                # A row that does not fit (out of memory) or cannot run here (liger missing, off CUDA) is a result
                # too; the other rows still run.
                row = {"row": name, "model": RECIPE_ROWS[name]["model"], "error": f"{type(error).__name__}: {error}"}
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)
    baseline = next((r for r in rows if r["model"] == "llava" and "error" not in r), None)
    device_name = torch.cuda.get_device_name() if not smoke else "CPU (smoke: tiny widths, timings not meaningful)"
    print(f"\n{device_name} | torch {torch.__version__} | transformers {transformers.__version__}")
    print("| row | attention | real tokens/s | padding | positions / real token | peak GiB | projector share | "
          "vs TRL LLaVA |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['row']} | - | {r['error'][:100]} | | | | | |")
            continue
        ratio = "1 (baseline)" if r is baseline else (
            f"{r['real_tokens_per_s'] / baseline['real_tokens_per_s']:.2f}" if baseline else "-"
        )  # fmt: skip
        print(
            f"| {r['row']} | {r['attn']} | {r['real_tokens_per_s']:,.0f} | {r['padding_fraction']:.1%} | "
            f"{r['positions_per_real_token']:.2f} | {r['peak_gib']:.1f} | {r['projector_share']:.1%} | {ratio} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            summary = {"device": device_name, "torch": torch.__version__, "transformers": transformers.__version__}
            json.dump({**summary, "vocabulary": vocabulary, "padding": padding, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
