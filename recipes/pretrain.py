"""Stage 1 of SQ-LLaVA: vision-language alignment.

Builds SQ-LLaVA from a CLIP vision checkpoint and a Llama/Vicuna checkpoint, freezes both towers, and trains the
prototype extractor + MLP projector (and, optionally, ViT-LoRA) on image captions in LLaVA's "plain" format
(`<image>` then the caption). The output folder is a complete model + processor that stage 2 starts from, with any
ViT-LoRA already merged into the vision tower.

```bash
# 8 GPUs, the paper's 7B recipe (global batch 256)
accelerate launch --config_file recipes/accelerate/zero2.yaml recipes/pretrain.py \
    --config recipes/configs/sqllava-7b/pretrain.yaml

# the offline tiny default on a CPU
python recipes/pretrain.py --config recipes/configs/tiny/pretrain.yaml
```
Every YAML key can be overridden on the command line (`--learning_rate 5e-4`); unknown keys are rejected.
"""

from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `python recipes/pretrain.py` works

from recipes.common import (
    DataArguments,
    ModelArguments,
    build_lora_config,
    gathered_state_dict,
    train,
    write_run_reports,
)

logger = logging.getLogger("sqllava.pretrain")


def build_stage1_model(model_args: ModelArguments):
    """The untrained SQ-LLaVA and its processor, assembled from the two pretrained towers."""
    from modeling_sqllava import SQLlavaForConditionalGeneration
    from recipes.common import build_processor_from_towers

    processor = build_processor_from_towers(
        model_args.vision_tower_name_or_path, model_args.text_model_name_or_path, image_size=model_args.image_size
    )
    model = SQLlavaForConditionalGeneration.from_vision_text_pretrained(
        model_args.vision_tower_name_or_path,
        model_args.text_model_name_or_path,
        tokenizer=processor.tokenizer,
        projector_type=model_args.projector_type,
        num_prototypes=model_args.num_prototypes,
        prototype_iterations=model_args.prototype_iterations,
        vision_feature_layer=model_args.vision_feature_layer,
        dtype=model_args.torch_dtype(),
        attn_implementation=model_args.attn_implementation,
    )
    if processor.image_seq_length != model.config.image_seq_length:
        raise ValueError(
            f"processor.image_seq_length={processor.image_seq_length} but the model expects "
            f"{model.config.image_seq_length} image tokens; check --image_size against the vision tower."
        )
    return model, processor


def prepare_stage1_trainables(model, model_args: ModelArguments):
    """Freeze both towers; train the projector, plus ViT-LoRA when `vision_lora_r > 0`."""
    from recipes.common import apply_vision_lora_dropout

    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    stage1_args = ModelArguments(**{**vars(model_args), "lora_r": 0})
    lora_config = build_lora_config(stage1_args, modules_to_save=["multi_modal_projector"])
    if lora_config is None:
        return model, None
    from recipes.common import get_peft_model

    model = get_peft_model(model, lora_config, autocast_adapter_dtype=model_args.lora_dtype == "float32")
    apply_vision_lora_dropout(model, model_args.vision_lora_dropout)
    return model, lora_config


def save_stage1(trainer, processor, lora_config, output_dir: str) -> None:
    """Write a complete model folder (ViT-LoRA merged) + processor that stage 2 loads with `from_pretrained`.

    The weights come from the gathered (full) state dict, loaded into a fresh CPU copy of the model, so the same code
    saves correctly under DDP, ZeRO-2/3 and FSDP.
    """
    import torch

    from modeling_sqllava import SQLlavaForConditionalGeneration

    state_dict = gathered_state_dict(trainer)  # collective: every rank calls it
    if not trainer.accelerator.is_main_process:
        return
    base = trainer.accelerator.unwrap_model(trainer.model)
    config = (base.get_base_model() if lora_config is not None else base).config
    fresh = SQLlavaForConditionalGeneration(config).to(dtype=next(iter(state_dict.values())).dtype)
    if lora_config is not None:
        from recipes.common import get_peft_model

        fresh = get_peft_model(fresh, lora_config, autocast_adapter_dtype=False)
    missing, unexpected = fresh.load_state_dict(state_dict, strict=False)
    # Non-persistent buffers (rotary frequencies, CLIP position ids) are not in a state dict; nothing else may be missing.
    missing = [k for k in missing if not k.endswith(("inv_freq", "position_ids", "original_inv_freq"))]
    if missing or unexpected:
        raise RuntimeError(f"Stage-1 save: missing keys {missing[:10]}, unexpected keys {unexpected[:10]}.")
    if lora_config is not None:
        fresh = fresh.merge_and_unload()
    with torch.no_grad():
        fresh.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)


def main(model_args: ModelArguments, data_args: DataArguments, training_args) -> str:
    """Run stage 1; returns the output folder."""
    from transformers import set_seed

    if training_args.stage != "pretrain":
        raise ValueError(f"stage={training_args.stage!r}: recipes/pretrain.py runs stage 'pretrain'.")
    # Seed before the model exists: LoRA A matrices (and a fresh projector) are initialised from the global RNG, and
    # Trainer only seeds in its own __init__, after that.
    set_seed(training_args.seed)
    model, processor = build_stage1_model(model_args)
    model, lora_config = prepare_stage1_trainables(model, model_args)

    trainer, result = train(model, processor, data_args, training_args, model_args=model_args)
    save_stage1(trainer, processor, lora_config, training_args.output_dir)
    if trainer.accelerator.is_main_process:
        write_run_reports(trainer, result, training_args.output_dir)
    return training_args.output_dir


def parse_args(argv: list[str] | None = None):
    from recipes.common import parse_recipe_args
    from recipes.trainer import SQLlavaSFTConfig

    return parse_recipe_args((ModelArguments, DataArguments, SQLlavaSFTConfig), argv, script="recipes/pretrain.py")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(*parse_args())
