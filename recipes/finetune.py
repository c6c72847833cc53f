"""Stage 2 of SQ-LLaVA: self-questioning visual instruction tuning.

Starts from the stage-1 folder (`recipes/pretrain.py`), adds LLM-LoRA and ViT-LoRA in one PEFT adapter, trains them
and the projector with the self-questioning objective (user turns after the first become `vuser` turns with
probability `sq_ratio`; the model learns to ask them as well as to answer), saves the adapter (projector included)
and, with `--export_dir` or `--push_to_hub`, a merged Hub-ready folder.

```bash
# 8 GPUs, the paper's 7B recipe (global batch 128), then publish the merged model
accelerate launch --config_file recipes/accelerate/zero2.yaml recipes/finetune.py \
    --config recipes/configs/sqllava-7b/finetune.yaml --push_to_hub --hub_model_id you/sqllava-7b

# the offline tiny default on a CPU
python recipes/finetune.py --config recipes/configs/tiny/finetune.yaml
```
Every YAML key can be overridden on the command line (`--sq_ratio 0.3`); unknown keys are rejected. Resume a killed
run with `--resume_from_checkpoint latest`.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `python recipes/finetune.py` works

from recipes.common import (
    DataArguments,
    ModelArguments,
    apply_vision_lora_dropout,
    build_lora_config,
    check_full_tensors,
    train,
    write_run_reports,
)

logger = logging.getLogger("sqllava.finetune")


@dataclass
class ExportArguments:
    """What happens after training: a merged, verified, Hub-ready folder, optionally pushed."""

    export_dir: str | None = field(
        default=None,
        metadata={"help": "Write the merged model here (default with --push_to_hub: <output_dir>/merged)."},
    )
    export_dtype: str = field(default="bfloat16", metadata={"help": "bfloat16, float16 or float32."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})


def build_stage2_model(model_args: ModelArguments):
    """The stage-1 model with one LoRA adapter on both towers; the projector trains in full (modules_to_save)."""
    from modeling_sqllava import SQLlavaForConditionalGeneration
    from processing import SQLlavaProcessor

    if not model_args.model_name_or_path:
        raise ValueError("model_name_or_path is required in stage 2: the folder written by recipes/pretrain.py.")
    processor = SQLlavaProcessor.from_pretrained(model_args.model_name_or_path, trust_remote_code=False)
    model = SQLlavaForConditionalGeneration.from_pretrained(
        model_args.model_name_or_path,
        dtype=model_args.torch_dtype(),
        attn_implementation=model_args.attn_implementation,
    )
    return add_stage2_adapters(model, model_args), processor


def add_stage2_adapters(model, model_args: ModelArguments):
    """Freeze `model` and add stage 2's adapter: LLM-LoRA + ViT-LoRA, the projector trained in full.

    With `lora_dtype="auto"` (the default) the adapter weights keep the model's dtype (bf16 in the 7B/13B recipes);
    `"float32"` is PEFT's default (see `ModelArguments.lora_dtype` for the measured difference).
    """
    from recipes.common import get_peft_model

    model.requires_grad_(False)
    lora_config = build_lora_config(model_args, modules_to_save=["multi_modal_projector"])
    if lora_config is None:
        raise ValueError("Stage 2 trains LoRA adapters: set lora_r > 0 and/or vision_lora_r > 0.")
    model = get_peft_model(model, lora_config, autocast_adapter_dtype=model_args.lora_dtype == "float32")
    if model_args.vision_lora_r > 0:
        apply_vision_lora_dropout(model, model_args.vision_lora_dropout)
    return model


def main(model_args: ModelArguments, data_args: DataArguments, training_args, export_args: ExportArguments) -> dict:
    """Run stage 2; returns the paths written (adapter folder, and merged folder when exported)."""
    from transformers import set_seed

    if training_args.stage != "finetune":
        raise ValueError(f"stage={training_args.stage!r}: recipes/finetune.py runs stage 'finetune'.")
    # The Trainer would push raw checkpoints (adapters) to the Hub; SQ-LLaVA publishes the merged model instead.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    if push_to_hub and not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. you/sqllava-7b).")

    # Seed before the model exists: LoRA A matrices (and a fresh projector) are initialised from the global RNG, and
    # Trainer only seeds in its own __init__, after that.
    set_seed(training_args.seed)
    model, processor = build_stage2_model(model_args)
    trainer, result = train(model, processor, data_args, training_args, model_args=model_args)

    # Trainer.save_model gathers ZeRO-3 / FSDP shards before PEFT writes the adapter (+ projector) weights.
    trainer.save_model(training_args.output_dir)
    outputs = {"adapter": training_args.output_dir}
    if not trainer.accelerator.is_main_process:
        return outputs
    processor.save_pretrained(training_args.output_dir)
    _check_saved_adapter(training_args.output_dir)
    write_run_reports(trainer, result, training_args.output_dir)

    export_dir = export_args.export_dir or (os.path.join(training_args.output_dir, "merged") if push_to_hub else None)
    if export_dir:
        from hub_upload.export import export_model

        export_model(
            base_model=model_args.model_name_or_path,
            adapter=training_args.output_dir,
            output_dir=export_dir,
            dtype=export_args.export_dtype,
            training_config={**vars(model_args), **vars(data_args), **training_args.to_dict()},
            train_metrics=result.metrics,
            repo_id=training_args.hub_model_id,
        )
        outputs["merged"] = export_dir
    if push_to_hub:
        from hub_upload.push import push_folder

        outputs["commit"] = push_folder(
            export_dir,
            training_args.hub_model_id,
            private=export_args.hub_private,
            revision=getattr(training_args, "hub_revision", None),
            token=training_args.hub_token,
        )
    return outputs


def _check_saved_adapter(folder: str) -> None:
    """Fail loudly if sharded training saved empty tensors instead of the adapter and projector weights."""
    from safetensors.torch import load_file

    path = os.path.join(folder, "adapter_model.safetensors")
    if not os.path.isfile(path):
        raise RuntimeError(f"No adapter_model.safetensors in {folder}: the PEFT adapter was not saved.")
    check_full_tensors(load_file(path))


def parse_args(argv: list[str] | None = None):
    from recipes.common import parse_recipe_args
    from recipes.trainer import SQLlavaSFTConfig

    return parse_recipe_args((ModelArguments, DataArguments, SQLlavaSFTConfig, ExportArguments), argv, script="recipes/finetune.py")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(*parse_args())
