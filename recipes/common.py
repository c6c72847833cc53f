"""Script arguments and the small pieces `pretrain.py` and `finetune.py` share.

The two entry points parse three dataclasses with `trl.TrlParser` (`parse_recipe_args`): `ModelArguments` and
`DataArguments` below, and `SQLlavaSFTConfig` (the `SFTConfig` subclass of `recipes/trainer.py`). A YAML file given
with `--config` sets their defaults, command-line flags override it, unknown keys are rejected (TRL's behaviour), and
so are abbreviations (`--learning_rat` is an error, not `--learning_rate`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

LLM_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VIT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass
class ModelArguments:
    """Which towers, which projector, which adapters.

    Stage 1 builds the model from `vision_tower_name_or_path` + `text_model_name_or_path`; stage 2 starts from
    `model_name_or_path`, the folder stage 1 wrote.
    """

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Stage 2: the stage-1 output folder (or Hub id) to start from."}
    )
    vision_tower_name_or_path: str = field(
        default="openai/clip-vit-large-patch14-336", metadata={"help": "Stage 1: CLIP vision checkpoint."}
    )
    text_model_name_or_path: str = field(
        default="lmsys/vicuna-7b-v1.5", metadata={"help": "Stage 1: Llama/Vicuna checkpoint (model + tokenizer)."}
    )
    projector_type: str = field(default="prototype", metadata={"help": "'prototype' (SQ-LLaVA) or 'mlp2x_gelu'."})
    num_prototypes: int = field(default=256, metadata={"help": "Prototypes K of the extractor."})
    prototype_iterations: int = field(default=2, metadata={"help": "Clustering iterations T of the extractor."})
    vision_feature_layer: int = field(default=-2, metadata={"help": "CLIP layer whose patch features are used."})
    dtype: str = field(default="bfloat16", metadata={"help": f"Weights dtype, one of {DTYPES}."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "'sdpa', 'eager' or 'flash_attention_2'."})
    image_size: int | None = field(
        default=None, metadata={"help": "Processor image size; defaults to the vision tower's image_size."}
    )
    # LLM-LoRA (stage 2)
    lora_r: int = field(default=0, metadata={"help": "LLM-LoRA rank; 0 disables LLM-LoRA."})
    lora_alpha: int = field(default=256, metadata={"help": "LLM-LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LLM-LoRA dropout."})
    lora_target_modules: list[str] = field(default_factory=lambda: list(LLM_LORA_TARGETS))
    # ViT-LoRA (both stages)
    vision_lora_r: int = field(default=0, metadata={"help": "ViT-LoRA rank; 0 disables ViT-LoRA."})
    vision_lora_alpha: int = field(default=64, metadata={"help": "ViT-LoRA alpha."})
    vision_lora_dropout: float = field(default=0.2, metadata={"help": "ViT-LoRA dropout."})
    vision_lora_target_modules: list[str] = field(default_factory=lambda: list(VIT_LORA_TARGETS))
    # "auto": adapters in the weights' dtype, so bf16 in the bf16 recipes. PEFT's float32 default runs every LoRA layer
    # on an upcast float32 copy of its input: at the 7B shape on an H200, bf16 adapters trained at 7,689 tokens/s
    # against 5,782 with float32 ones (1.34x, checkpointing on; benchmarks/RESULTS.md, bench_train), and
    # ../shared/PERFORMANCE.md measured 7,967 against 4,643 (dropout 0 vs 0.05). The price: AdamW then updates
    # bf16 weights, whose rounding (8 significant bits) absorbs updates below about 1/256 of a weight's magnitude;
    # at the recipes' learning rates (LLM-LoRA 2e-4, 7B lora_A entries about 1/64) an update is a few such units.
    # tests/test_train_speed.py checks that tiny bf16 training curves match float32 adapters; `float32` restores
    # PEFT's behaviour.
    lora_dtype: str = field(
        default="auto",
        metadata={
            "help": "'auto' keeps adapter weights in the base weights' dtype (bf16 in the bf16 recipes: 1.34x the "
            "throughput at 7B); 'float32' keeps them in fp32 (PEFT's default, slower without autocast)."
        },
    )

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not one of {DTYPES}.")
        if self.lora_dtype not in ("float32", "auto"):
            raise ValueError(f"lora_dtype={self.lora_dtype!r}: use 'float32' or 'auto'.")
        for name in ("lora_r", "vision_lora_r"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0 (0 disables that adapter).")
        for name in ("lora_dropout", "vision_lora_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1).")

    def torch_dtype(self):
        import torch

        return {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[
            self.dtype
        ]


@dataclass
class DataArguments:
    """Where the training data is.

    `data_path` takes LLaVA/ShareGPT4V JSON files (images under `image_folder`) and `dataset_name` HF datasets with
    `images` + `messages` columns; several sources are mixed with `mixture_weights`.
    """

    data_path: list[str] = field(default_factory=list, metadata={"help": "LLaVA-format JSON file(s)."})
    image_folder: str | None = field(default=None, metadata={"help": "Folder the JSON's image paths are relative to."})
    dataset_name: list[str] = field(default_factory=list, metadata={"help": "HF dataset(s) with images + messages."})
    dataset_split: str = field(default="train")
    mixture_weights: list[float] = field(
        default_factory=list, metadata={"help": "One weight per source (JSON files first, then HF datasets)."}
    )
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N samples of each source."})
    group_by_modality_length: bool = field(
        default=False, metadata={"help": "LLaVA's length-grouped batches, image and text-only samples apart."}
    )
    allow_images_outside_folder: bool = field(
        default=False,
        metadata={"help": "Accept image paths that leave --image_folder ('../x.jpg', absolute paths elsewhere)."},
    )

    def __post_init__(self):
        if not self.data_path and not self.dataset_name:
            raise ValueError(
                "No training data: pass a recipe with --config (e.g. --config recipes/configs/sqllava-7b/finetune.yaml, "
                "which sets data_path), or a data source: --data_path file.json or --dataset_name name."
            )
        n_sources = len(self.data_path) + len(self.dataset_name)
        if self.mixture_weights and len(self.mixture_weights) != n_sources:
            raise ValueError(
                f"mixture_weights has {len(self.mixture_weights)} values for {n_sources} sources; give one per source."
            )


def build_lora_config(model_args: ModelArguments, *, modules_to_save: list[str] | None = None):
    """One PEFT `LoraConfig` adapting both towers: LLM-LoRA and ViT-LoRA with their own rank and alpha.

    A single adapter keeps saving, loading and merging one-step operations. The ranks differ per tower through
    `rank_pattern`/`alpha_pattern`; PEFT has no per-module dropout, so `apply_vision_lora_dropout` sets the ViT value
    after `get_peft_model`. Returns `None` when both ranks are 0.
    """
    from peft import LoraConfig

    patterns = []
    if model_args.lora_r > 0:
        patterns.append(rf"model\.language_model\..*\.({'|'.join(model_args.lora_target_modules)})")
    if model_args.vision_lora_r > 0:
        patterns.append(rf"model\.vision_tower\..*\.({'|'.join(model_args.vision_lora_target_modules)})")
    if not patterns:
        return None
    base_r = model_args.lora_r or model_args.vision_lora_r
    base_alpha = model_args.lora_alpha if model_args.lora_r else model_args.vision_lora_alpha
    rank_pattern, alpha_pattern = {}, {}
    if model_args.lora_r and model_args.vision_lora_r:
        rank_pattern[r"model\.vision_tower\..*"] = model_args.vision_lora_r
        alpha_pattern[r"model\.vision_tower\..*"] = model_args.vision_lora_alpha
    return LoraConfig(
        r=base_r,
        lora_alpha=base_alpha,
        lora_dropout=model_args.lora_dropout if model_args.lora_r else model_args.vision_lora_dropout,
        # A regex string is matched against the full module name, which is how one adapter tells the towers apart.
        target_modules="|".join(f"(.*{p}$)" for p in patterns) if len(patterns) > 1 else f".*{patterns[0]}$",
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        modules_to_save=modules_to_save,
        bias="none",
        task_type=None,
    )


@contextlib.contextmanager
def peft_checkpointing_warning_silenced():
    """Silence, inside the block only, the deprecation warning PEFT triggers on every run under transformers 5.

    PEFT reads `model.is_gradient_checkpointing`, which transformers 5 renamed (`is_activation_checkpointing`) and
    warns about at each read; nothing a user can change. Only that warning is silenced.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def get_peft_model(model, lora_config, **kwargs):
    """`peft.get_peft_model`, without the deprecation warning it triggers under transformers 5 (see above)."""
    from peft import get_peft_model as peft_get_peft_model

    with peft_checkpointing_warning_silenced():
        return peft_get_peft_model(model, lora_config, **kwargs)


def apply_vision_lora_dropout(model, p: float) -> int:
    """Set the dropout of every ViT-LoRA layer to `p`; returns how many layers were changed."""
    import torch

    changed = 0
    for name, module in model.named_modules():
        if ".vision_tower." in f".{name}." and hasattr(module, "lora_dropout"):
            for adapter in list(module.lora_dropout.keys()):
                module.lora_dropout[adapter] = torch.nn.Dropout(p) if p > 0 else torch.nn.Identity()
                changed += 1
    return changed


def write_json(path: str, payload: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)


def parse_recipe_args(dataclass_types: tuple, argv: list[str] | None, script: str):
    """Parse a recipe's command line with `trl.TrlParser`: YAML defaults from `--config`, flags override them,
    unknown keys and abbreviated flags are errors.

    Args:
        dataclass_types: the argument dataclasses, in the order they are returned.
        argv: the arguments (default: `sys.argv[1:]`).
        script: the script's path for messages, e.g. `recipes/finetune.py`.
    """
    import sys

    from trl import TrlParser

    argv = list(sys.argv[1:] if argv is None else argv)
    stage = "pretrain" if "pretrain" in os.path.basename(script) else "finetune"
    if not argv:
        raise SystemExit(
            f"{script} takes a recipe: accelerate launch {script} --config recipes/configs/sqllava-7b/{stage}.yaml "
            f"(or recipes/configs/tiny/{stage}.yaml on a CPU); any YAML key can be overridden with --key value."
        )
    # allow_abbrev=False: argparse would otherwise take `--learning_rat 1e-3` as `--learning_rate`.
    parser = TrlParser(dataclass_types, allow_abbrev=False)
    return parser.parse_args_and_config(argv)


def load_training_data(data_args: DataArguments, *, seed: int, strict: bool, stats=None):
    """All sources of `data_args` as one dataset of canonical records (see recipes/data.py)."""
    from recipes.data import MixtureDataset, load_hf_dataset, load_llava_json

    sources = [
        load_llava_json(
            path,
            data_args.image_folder,
            strict=strict,
            stats=stats,
            max_samples=data_args.max_samples,
            allow_outside_image_folder=data_args.allow_images_outside_folder,
        )
        for path in data_args.data_path
    ]
    sources += [
        load_hf_dataset(
            name, split=data_args.dataset_split, strict=strict, stats=stats, max_samples=data_args.max_samples
        )
        for name in data_args.dataset_name
    ]
    if len(sources) == 1 and not data_args.mixture_weights:
        return sources[0]
    weights = data_args.mixture_weights or [float(len(s)) for s in sources]
    names = data_args.data_path + data_args.dataset_name
    return MixtureDataset(dict(zip(names, sources)), weights=weights, seed=seed)


def gathered_state_dict(trainer) -> dict:
    """The full (unsharded) state dict of the trained model, on the main process.

    Under DeepSpeed ZeRO-3 and FSDP each rank holds a shard; `accelerator.get_state_dict` gathers whole tensors (it is
    a collective: every rank must call it). A tensor with zero elements here means the gathering failed (the LLaVA
    family's classic `torch.Size([0])` checkpoints), so it is an error rather than a silent empty save.
    """
    state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if trainer.accelerator.is_main_process:
        check_full_tensors(state_dict)
    return state_dict


def check_full_tensors(state_dict: dict) -> None:
    empty = [name for name, tensor in state_dict.items() if tensor.numel() == 0]
    if empty:
        raise RuntimeError(
            f"{len(empty)} tensors were saved empty (sharded weights not gathered), e.g. {empty[:5]}. Under ZeRO-3 set "
            "`zero3_save_16bit_model: true`; under FSDP use `fsdp_state_dict_type: FULL_STATE_DICT`."
        )


def build_processor_from_towers(vision_path: str, text_path: str, *, image_size: int | None = None):
    """The stage-1 processor: the text checkpoint's tokenizer (+ `<image>`, `<pad>`) and LLaVA-1.5 pad-to-square
    preprocessing at the vision tower's resolution (336 px for ViT-L/14-336).

    Args:
        vision_path: CLIP vision checkpoint (folder or Hub id); its config gives image and patch size.
        text_path: Llama/Vicuna checkpoint holding the tokenizer.
        image_size: overrides the vision config's image size (the tower must support it).
    """
    from transformers import AutoConfig, AutoTokenizer

    from processing import SQLlavaProcessor

    # Stage 1 takes the towers' paths from the user: their own code never runs (no interactive prompt either).
    vision_config = AutoConfig.from_pretrained(vision_path, trust_remote_code=False)
    vision_config = getattr(vision_config, "vision_config", vision_config)  # a full CLIP checkpoint works too
    image_size = image_size or vision_config.image_size
    tokenizer = AutoTokenizer.from_pretrained(text_path, trust_remote_code=False)
    return SQLlavaProcessor.from_tokenizer(tokenizer, image_size=image_size, patch_size=vision_config.patch_size)


def recipe_fingerprint(model_args: ModelArguments | None, data_args: DataArguments, training_args) -> dict:
    """The run fingerprint stored with each checkpoint: every argument except output paths and reporting, the data
    files (size, SHA-256 of the first MiB) and the model path (see `recipes.checkpoints.run_fingerprint`)."""
    from recipes.checkpoints import run_fingerprint

    files = list(data_args.data_path) + [name for name in data_args.dataset_name if os.path.isdir(name)]
    return run_fingerprint(model_args, data_args, training_args, data_files=files, world_size=training_args.world_size)


def train(model, processor, data_args: DataArguments, training_args, model_args: ModelArguments | None = None):
    """Load the data, build `SQLlavaTrainer` and train (resuming when asked); returns `(trainer, train_result)`.

    The same for both stages: the stage (`training_args.stage`) selects the collator's format. With `model_args`,
    the run fingerprint covers the model too.
    """
    from recipes.data import SkipStats
    from recipes.trainer import SQLlavaTrainer

    stats = SkipStats()
    train_dataset = load_training_data(
        data_args, seed=training_args.seed, strict=training_args.strict_data, stats=stats
    )
    trainer = SQLlavaTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        skip_stats=stats,
        group_by_modality_length=data_args.group_by_modality_length,
        run_fingerprint=recipe_fingerprint(model_args, data_args, training_args),
    )
    # "latest" is resolved by the trainer: the newest complete checkpoint, skipped ones logged.
    return trainer, trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)


def write_run_reports(trainer, train_result, output_dir: str) -> None:
    """`train_results.json` next to the saved model. The run's `skipped_samples.json` (every dropped sample, by
    reason) is already there: `recipes.skip_report.SkipReportCallback` writes it at the end of training."""
    write_json(os.path.join(output_dir, "train_results.json"), train_result.metrics)
