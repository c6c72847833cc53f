"""The TRL side of SQ-LLaVA training: `SQLlavaSFTConfig` (a `trl.SFTConfig`) and `SQLlavaTrainer` (a `trl.SFTTrainer`).

- `SQLlavaSFTConfig`: the self-questioning options and VLM defaults, validated on construction.
- `SQLlavaTrainer`: builds the [`~recipes.collator.SelfQuestioningCollator`] (padded, or packed with
  `padding_free=True`), re-draws the vuser turns every epoch, logs `loss_answer` / `loss_question` /
  `question_token_fraction`, uses one learning rate per component (LLM, projector, vision tower) and audits, at the
  first optimizer step, that every trainable parameter received a gradient. Its metrics stay on the device between
  logging steps (no host sync in the training step), the loss runs on the kernel `loss_kernel` selects (full logits,
  TRL's fused LM head, or liger's fused linear cross-entropy), `liger_kernels=True` puts liger's RMSNorm / SwiGLU /
  RoPE on the inner Llama (`recipes/liger.py`), and `gradient_checkpointing_every_n_layers` checkpoints only every
  n-th decoder layer of the language model. It keeps one skip report for the whole run
  (`recipes/skip_report.py`) and writes checkpoints that are complete or absent, with the run fingerprint a resume
  must match (`recipes/checkpoints.py`).

The collator itself is in `recipes/collator.py`, which imports no TRL.

Example:

```python
>>> from recipes.trainer import SQLlavaSFTConfig, SQLlavaTrainer
>>> args = SQLlavaSFTConfig(output_dir="out", stage="finetune", sq_ratio=0.5, projector_lr=2e-5, vision_lr=2e-4)
>>> trainer = SQLlavaTrainer(model=model, args=args, train_dataset=records, processing_class=processor)
>>> trainer.train()
```
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from processing.processing_sqllava import MAX_IMAGE_ASPECT_RATIO, MAX_IMAGE_PIXELS
from recipes.collator import IGNORE_INDEX, MODES, SelfQuestioningCollator
from recipes.data import SkipStats
from recipes.skip_report import RunSkipReport, SkipReportCallback

_TRAINING_ARGUMENT_FIELDS = set(SFTConfig.__dataclass_fields__)

logger = logging.getLogger(__name__)


# ---- parameter groups ----

_PROJECTOR_PATTERN = re.compile(r"(?:^|\.)multi_modal_projector\.")
_VISION_PATTERN = re.compile(r"(?:^|\.)vision_tower\.")
PARAMETER_COMPONENTS = ("llm", "projector", "vision")


def parameter_component(name: str) -> str:
    """`"projector"`, `"vision"` or `"llm"` for a parameter name, with or without PEFT's `base_model.model.` prefix."""
    if _PROJECTOR_PATTERN.search(name):
        return "projector"
    if _VISION_PATTERN.search(name):
        return "vision"
    return "llm"


def build_parameter_groups(
    model: torch.nn.Module,
    decay_parameter_names: set[str] | list[str],
    *,
    learning_rate: float,
    weight_decay: float,
    projector_lr: float | None = None,
    vision_lr: float | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: one learning rate per component, weight decay only on `decay_parameter_names`.

    Groups without parameters are omitted. Each group carries a `"name"` (`"llm"`, `"projector.no_decay"`, ...) that
    torch optimizers keep and ignore, for logging and tests.

    Args:
        model: the model to optimise (PEFT-wrapped or not); only parameters with `requires_grad` are grouped.
        decay_parameter_names: names that take weight decay (`Trainer.get_decay_parameter_names`).
        learning_rate: learning rate of the LLM (LoRA or full) and anything that is neither projector nor vision.
        weight_decay: weight decay of the decayed groups.
        projector_lr: learning rate of `multi_modal_projector` parameters (`None`: `learning_rate`).
        vision_lr: learning rate of `vision_tower` parameters (`None`: `learning_rate`).
    """
    decay_parameter_names = set(decay_parameter_names)
    rates = {
        "llm": learning_rate,
        "projector": learning_rate if projector_lr is None else projector_lr,
        "vision": learning_rate if vision_lr is None else vision_lr,
    }
    buckets: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        key = (parameter_component(name), name in decay_parameter_names)
        buckets.setdefault(key, []).append(parameter)
    groups = []
    for component in PARAMETER_COMPONENTS:
        for decay in (True, False):
            params = buckets.get((component, decay))
            if not params:
                continue
            groups.append(
                {
                    "params": params,
                    "lr": rates[component],
                    "weight_decay": weight_decay if decay else 0.0,
                    "name": component if decay else f"{component}.no_decay",
                }
            )
    return groups


def find_parameters_without_gradient(
    named_parameters: list[tuple[str, torch.nn.Parameter]],
    grad_of: Any = None,
    skip: Any = None,
) -> tuple[list[str], list[str]]:
    """Names of trainable parameters whose gradient is `None`, and of those whose gradient is all zero.

    A LoRA `lora_A` matrix whose paired `lora_B` is still all zero (PEFT's initialisation, kept through a first step
    taken at learning rate 0 during warm-up) has an exactly-zero gradient by construction; it is not reported.

    Args:
        named_parameters: `(name, parameter)` pairs, typically `model.named_parameters()`.
        grad_of: callable returning a parameter's full gradient (DeepSpeed: `safe_get_full_grad`); `p.grad` by default.
        skip: callable `name -> bool` for parameters not to audit now.
    """
    named_parameters = list(named_parameters)
    by_name = dict(named_parameters)
    missing, zero = [], []
    for name, parameter in named_parameters:
        if not parameter.requires_grad or (skip is not None and skip(name)):
            continue
        grad = parameter.grad if grad_of is None else grad_of(parameter)
        if grad is None:
            missing.append(name)
        elif not bool(torch.count_nonzero(grad)):
            partner = by_name.get(name.replace(".lora_A.", ".lora_B.")) if ".lora_A." in name else None
            if partner is not None and not bool(torch.count_nonzero(partner.detach())):
                continue
            zero.append(name)
    return missing, zero


# ---- TRL classes ----

LOSS_KERNELS = ("auto", "logits", "trl", "liger")


@dataclass
class SQLlavaSFTConfig(SFTConfig):
    """`trl.SFTConfig` with the self-questioning options and VLM defaults.

    Defaults that differ from `SFTConfig`: `remove_unused_columns=False` (the collator reads `images` and
    `messages`), `dataset_kwargs={"skip_prepare_dataset": True}` (the collator tokenizes on the fly),
    `max_length=2048`, `pad_to_multiple_of=8`, and an unset `bf16` stays off where no bf16 accelerator exists.

    Args:
        sq_ratio (`float`, defaults to 0.5): probability that each user turn after the first becomes a `vuser`
            turn (stage 2).
        sq_loss_weight (`float`, defaults to 1.0): weight of question tokens in the loss; 1.0 is the paper's plain
            token-mean cross-entropy over questions and answers together.
        projector_lr (`float`, *optional*): learning rate of the prototype extractor + projector (`None`:
            `learning_rate`).
        vision_lr (`float`, *optional*): learning rate of the vision tower's trainable (LoRA) parameters (`None`:
            `learning_rate`).
        stage (`str`, defaults to `"finetune"`): `"pretrain"` (plain captions) or `"finetune"` (self-questioning).
        strict_data (`bool`, defaults to `False`): raise on the first sample the collator would drop.
        audit_trainable (`str`, defaults to `"error"`): what to do when a trainable parameter receives no gradient
            at the first optimizer step: `"error"`, `"warn"` or `"off"`.
        max_skip_fraction (`float`, defaults to 0.01): the run fails when it drops more than this share of its
            samples (at load and at collate time, all workers and ranks); `1.0` never fails.
        allow_resume_changes (`bool`, defaults to `False`): resume from a checkpoint whose run fingerprint
            (configuration, data files, model) differs from this run's; the differences are logged.
        max_image_pixels, max_image_aspect_ratio: image size limits; a larger image is dropped (`image_size_limit`)
            before it is decoded.
        activation_checkpointing (`bool`, *optional*): transformers 5's name of `gradient_checkpointing` (the
            recipes' YAML key), accepted on transformers 4.57 too; unset, TRL's default (on) applies.
        padding_free (`bool`, defaults to `False`): TRL's option with TRL's meaning, here for image batches: the
            collator packs each batch into one row with `position_ids` (see `SelfQuestioningCollator`). Pays off
            with flash-attention (varlen); with SDPA/eager the packed row's attention is computed as one `N x N`
            block.
        loss_kernel (`str`, defaults to `"auto"`): how the per-token cross-entropy is computed: `"logits"` (full
            logits, then log-softmax), `"trl"` (TRL's fused LM head: chunked, never builds `B x T x vocab` logits;
            Triton on CUDA/XPU), `"liger"` (liger's fused linear cross-entropy, needs `liger_kernels`), or
            `"auto"`: `"liger"` with `liger_kernels`, else `"trl"` on CUDA/XPU, else `"logits"` (on CPU, TRL's
            torch fallback of the fused head is slower than full logits at small vocabularies).
        liger_kernels (`bool`, defaults to `False`): liger-kernel's RMSNorm, SwiGLU and RoPE on the inner Llama
            (`pip install "sqllava[liger]"`, CUDA only). Use this rather than TRL's `use_liger_kernel`, which patches
            by `model_type` and does not know `sqllava`.
        gradient_checkpointing_every_n_layers (`int`, defaults to 1): with `gradient_checkpointing`, checkpoint only
            decoder layers 0, n, 2n, ... of the language model (the vision tower stays fully checkpointed); 1 is
            every layer, transformers' default.
    """

    sq_ratio: float = field(
        default=0.5, metadata={"help": "Probability that each user turn after the first becomes a vuser turn."}
    )
    sq_loss_weight: float = field(
        default=1.0, metadata={"help": "Loss weight of question tokens (1.0: plain token-mean CE, as the paper)."}
    )
    projector_lr: float | None = field(
        default=None, metadata={"help": "Learning rate of the projector; defaults to learning_rate."}
    )
    vision_lr: float | None = field(
        default=None, metadata={"help": "Learning rate of the vision tower (LoRA); defaults to learning_rate."}
    )
    stage: str = field(
        default="finetune",
        metadata={"help": "Training stage: 'pretrain' or 'finetune'.", "choices": ["pretrain", "finetune"]},
    )
    strict_data: bool = field(default=False, metadata={"help": "Raise on the first sample the collator would drop."})
    log_sample_ids: bool = field(
        default=False,
        metadata={"help": "Write the ids each rank trained on to <output_dir>/sample_ids_rank<r>.json."},
    )
    audit_trainable: str = field(
        default="error",
        metadata={
            "help": "Trainable parameters without gradient at the first step: 'error', 'warn' or 'off'.",
            "choices": ["error", "warn", "off"],
        },
    )
    max_skip_fraction: float = field(
        default=0.01,
        metadata={"help": "Fail when the run drops more than this share of its samples (1.0: never fail)."},
    )
    allow_resume_changes: bool = field(
        default=False,
        metadata={"help": "Resume even if the configuration, data files or model differ from the checkpoint's run."},
    )
    max_image_pixels: int | None = field(
        default=MAX_IMAGE_PIXELS, metadata={"help": "Drop images with more pixels (checked before decoding)."}
    )
    max_image_aspect_ratio: float | None = field(
        default=MAX_IMAGE_ASPECT_RATIO, metadata={"help": "Drop images more elongated than this (e.g. 100 for 100:1)."}
    )
    # TRL's `gradient_checkpointing=True` default would make transformers 5 warn on every run that the name is
    # deprecated: unset here, resolved in `__post_init__` under whichever name the installed transformers uses.
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Alias of activation_checkpointing (the name before transformers 5).",
            "nargs": "?",
            "const": True,
        },
    )
    if "activation_checkpointing" not in _TRAINING_ARGUMENT_FIELDS:  # transformers 4.57: give it the new name too
        activation_checkpointing: bool | None = field(
            default=None,
            metadata={
                "help": "Recompute activations in the backward pass to save memory.",
                "nargs": "?",
                "const": True,
            },
        )
        activation_checkpointing_kwargs: dict[str, Any] | str | None = field(
            default=None, metadata={"help": "Keyword arguments of activation checkpointing."}
        )
    loss_kernel: str = field(
        default="auto",
        metadata={
            "help": "Per-token cross-entropy: 'logits', 'trl' (TRL's fused LM head), 'liger', or 'auto' (liger with "
            "liger_kernels, else trl on CUDA/XPU, else logits).",
            "choices": list(LOSS_KERNELS),
        },
    )
    liger_kernels: bool = field(
        default=False,
        metadata={"help": "liger-kernel RMSNorm/SwiGLU/RoPE on the inner Llama (CUDA; pip install 'sqllava[liger]')."},
    )
    gradient_checkpointing_every_n_layers: int = field(
        default=1,
        metadata={"help": "With gradient_checkpointing: checkpoint LLM decoder layers 0, n, 2n, ... only (1: all)."},
    )
    # VLM defaults.
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep the `images` / `messages` columns the collator needs."}
    )
    dataset_kwargs: dict[str, Any] | str | None = field(
        default_factory=lambda: {"skip_prepare_dataset": True},
        metadata={"help": "Dataset preparation is skipped: the collator tokenizes on the fly."},
    )
    max_length: int | None = field(default=2048, metadata={"help": "Maximum sequence length (tokens)."})
    pad_to_multiple_of: int | str | None = field(
        default=8, metadata={"help": "Pad sequence lengths to a multiple of this."}
    )

    def __post_init__(self):
        self._resolve_activation_checkpointing()
        if self.bf16 is None and not self.fp16 and not self.use_cpu:
            from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

            # TRL turns an unset `bf16` on, which transformers rejects on machines without a bf16 accelerator;
            # the CPU smoke runs and the embedded default then train in float32 instead.
            if not (is_torch_bf16_gpu_available() or is_torch_xla_available()):
                self.bf16 = False
        super().__post_init__()
        if not 0.0 <= self.sq_ratio <= 1.0:
            raise ValueError(f"`sq_ratio` must be in [0, 1], got {self.sq_ratio}; SQ-LLaVA uses 0.5.")
        if not (math.isfinite(self.sq_loss_weight) and self.sq_loss_weight >= 0.0):
            raise ValueError(
                f"`sq_loss_weight` must be a finite number >= 0, got {self.sq_loss_weight}; 1.0 is the paper's loss."
            )
        for name in ("projector_lr", "vision_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"`{name}` must be >= 0 or None (None: learning_rate), got {value}.")
        if self.stage not in MODES:
            raise ValueError(f"`stage` must be 'pretrain' or 'finetune', got {self.stage!r}.")
        if self.audit_trainable not in ("error", "warn", "off"):
            raise ValueError(f"`audit_trainable` must be 'error', 'warn' or 'off', got {self.audit_trainable!r}.")
        if self.remove_unused_columns:
            raise ValueError(
                "`remove_unused_columns=True` would drop the `images` and `messages` columns the self-questioning "
                "collator reads; set `remove_unused_columns=False`."
            )
        if not (self.dataset_kwargs or {}).get("skip_prepare_dataset", False):
            raise ValueError(
                f"`dataset_kwargs={self.dataset_kwargs!r}` would let TRL tokenize the dataset; the collator does "
                "it on the fly. Set `dataset_kwargs={'skip_prepare_dataset': True}`."
            )
        if self.packing:
            raise ValueError(
                "`packing` (TRL's dataset packing) is not supported with images; set `packing=False`, and "
                "`padding_free=True` to pack each batch into one row instead."
            )
        if self.loss_kernel not in LOSS_KERNELS:
            raise ValueError(f"`loss_kernel` must be one of {LOSS_KERNELS}, got {self.loss_kernel!r}.")
        if self.loss_kernel == "liger" and not self.liger_kernels:
            raise ValueError("`loss_kernel='liger'` runs liger-kernel: set `liger_kernels=True` as well.")
        if self.use_liger_kernel:
            raise ValueError(
                "`use_liger_kernel=True` patches models by model_type, and liger has no `sqllava`: nothing would be "
                "replaced. Set `use_liger_kernel=False` and `liger_kernels=True`, which applies liger to the Llama "
                "inside SQ-LLaVA."
            )
        every = self.gradient_checkpointing_every_n_layers
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(
                f"`gradient_checkpointing_every_n_layers` must be an int >= 1 (1: every layer), got {every!r}."
            )
        if self.assistant_only_loss or self.completion_only_loss:
            raise ValueError(
                "Labels come from the self-questioning collator; leave `assistant_only_loss=False` and "
                "`completion_only_loss=None`."
            )
        if self.loss_type != "nll" or self.label_smoothing_factor != 0.0:
            raise ValueError(
                f"SQLlavaTrainer computes the token-mean cross-entropy itself; got loss_type={self.loss_type!r}, "
                f"label_smoothing_factor={self.label_smoothing_factor}. Use loss_type='nll' and "
                "label_smoothing_factor=0."
            )
        if not (math.isfinite(self.max_skip_fraction) and 0.0 <= self.max_skip_fraction <= 1.0):
            raise ValueError(
                f"`max_skip_fraction` must be in [0, 1], got {self.max_skip_fraction}; 0.01 fails a run that drops "
                "more than 1% of its samples, 1.0 never fails."
            )
        if self.dataloader_persistent_workers and self.dataloader_num_workers > 0 and 0.0 < self.sq_ratio < 1.0:
            raise ValueError(
                "`dataloader_persistent_workers=True` keeps the epoch-0 collator in every worker, so the vuser "
                "turns would never be re-drawn. Set `dataloader_persistent_workers=False`."
            )

    def _resolve_activation_checkpointing(self):
        """One switch under two names: `gradient_checkpointing` (transformers 4.x, deprecated in 5) and
        `activation_checkpointing` (transformers 5). Whichever was given is moved to the name the installed
        transformers reads, so no deprecation warning fires; with neither, TRL's default (on) applies."""
        new, old = self.activation_checkpointing, self.gradient_checkpointing
        new_kwargs = self.activation_checkpointing_kwargs
        old_kwargs = self.gradient_checkpointing_kwargs
        if new is not None and old is not None and bool(new) != bool(old):
            raise ValueError(
                f"activation_checkpointing={new} and gradient_checkpointing={old} are one switch; set only "
                "activation_checkpointing."
            )
        enabled = new if new is not None else (old if old is not None else True)
        kwargs = new_kwargs if new_kwargs is not None else old_kwargs
        if "activation_checkpointing" in _TRAINING_ARGUMENT_FIELDS:
            self.activation_checkpointing, self.activation_checkpointing_kwargs = enabled, kwargs
            self.gradient_checkpointing, self.gradient_checkpointing_kwargs = None, None
        else:
            self.gradient_checkpointing, self.gradient_checkpointing_kwargs = enabled, kwargs
            self.activation_checkpointing, self.activation_checkpointing_kwargs = enabled, kwargs


class _CollatorEpochCallback(TrainerCallback):
    """Sets the collator's epoch before each epoch's dataloader iterator (and its workers) is created."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        # `state.epoch` is the integer epoch at an epoch start, and its floor on resume mid-epoch.
        self.collator.set_epoch(int(math.floor((state.epoch or 0.0) + 1e-9)))


class _TrainabilityAuditCallback(TrainerCallback):
    """At the first optimizer step that saw images, reports every trainable parameter that got no gradient."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.done = False

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.done or args.audit_trainable == "off":
            return
        trainer = self.trainer
        saw_images = trainer._sq_step_saw_images
        trainer._sq_step_saw_images = False
        if trainer.accelerator.num_processes > 1:
            # Every rank must take the same branch: the DeepSpeed gradient gather below is a collective.
            flag = torch.tensor(float(saw_images), device=trainer.accelerator.device)
            saw_images = bool(trainer.accelerator.reduce(flag, reduction="sum") > 0)
        if trainer.is_fsdp_enabled:
            logger.warning("Trainability audit skipped: FSDP shards gradients across ranks.")
            self.done = True
            return
        grad_of = None
        if trainer.is_deepspeed_enabled:
            from deepspeed.utils import safe_get_full_grad

            grad_of = safe_get_full_grad

        def skip(name):
            # A step without images leaves the vision tower out of the graph: audit it at a step with images.
            return not saw_images and parameter_component(name) == "vision"

        missing, zero = find_parameters_without_gradient(trainer.model.named_parameters(), grad_of, skip)
        if saw_images:
            self.done = True
        if not missing and not zero:
            logger.info("Trainability audit passed: every trainable parameter received a gradient.")
            return
        lines = [f"  no gradient (None): {name}" for name in missing] + [
            f"  all-zero gradient: {name}" for name in zero
        ]
        shown = "\n".join(lines[:50]) + (f"\n  ... and {len(lines) - 50} more" if len(lines) > 50 else "")
        message = (
            f"Trainability audit: {len(missing) + len(zero)} parameter(s) require grad but received no gradient "
            f"at the first optimizer step:\n{shown}\nThey are not used in the forward pass, or their output is "
            "detached (torch.no_grad, .detach(), a frozen-module wrapper). Fix the graph, or freeze them "
            "(requires_grad=False); set `audit_trainable='warn'` to train anyway."
        )
        if args.audit_trainable == "error":
            raise RuntimeError(message)
        logger.warning(message)


def select_checkpointed_layers(model: torch.nn.Module, every_n_layers: int) -> list[int]:
    """Keep gradient checkpointing on decoder layers 0, n, 2n, ... of the language model only; returns those indices.

    Called after transformers enabled checkpointing on every layer (`gradient_checkpointing_enable`), it turns it off
    on the other decoder layers of the inner Llama, which then keep their activations: less recomputation for more
    memory. The vision tower's layers are left as they are. transformers >= 5.x has an `every_n_layers` of its own,
    but it counts the vision tower's layers too, and 4.57 has none.

    Args:
        model: the model being trained (PEFT-, DDP- or DeepSpeed-wrapped or not).
        every_n_layers: n >= 1; 1 leaves every layer checkpointed.
    """
    from recipes.liger import language_model_of

    layers = language_model_of(model).layers
    kept = []
    for index, layer in enumerate(layers):
        if not hasattr(layer, "gradient_checkpointing"):
            raise TypeError(f"Decoder layer {index} ({type(layer).__name__}) has no `gradient_checkpointing` flag.")
        layer.gradient_checkpointing = layer.gradient_checkpointing and index % every_n_layers == 0
        if layer.gradient_checkpointing:
            kept.append(index)
    return kept


class _CheckpointEveryNLayersCallback(TrainerCallback):
    """Applies `gradient_checkpointing_every_n_layers` once Trainer has enabled checkpointing (at train begin)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        # One switch under two names (`_resolve_activation_checkpointing`): transformers 5 reads
        # `activation_checkpointing`, 4.57 `gradient_checkpointing`.
        checkpointing = getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing
        if not checkpointing or args.gradient_checkpointing_every_n_layers == 1:
            return
        kept = select_checkpointed_layers(self.trainer.model_wrapped, args.gradient_checkpointing_every_n_layers)
        logger.info("Gradient checkpointing on language-model decoder layers %s only.", kept)


class SQLlavaTrainer(SFTTrainer):
    """`trl.SFTTrainer` for SQ-LLaVA's self-questioning objective.

    - Builds a [`SelfQuestioningCollator`] from `processing_class` and `args` when `data_collator` is None, and
      sets its epoch at every epoch start (so the vuser turns are re-drawn each epoch, identically after resume).
    - `compute_loss`: `sum_t w_t * CE_t / N`, where `N` is `num_items_in_batch` (the labelled tokens of the whole
      accumulated batch across devices, as in TRL and transformers) or the batch's own count when it is not given,
      and `w_t` is `sq_loss_weight` on question tokens and 1 on answer tokens (so 1.0 is plain CE). Logs
      `loss_answer` and `loss_question` (token-mean CE over answer / question tokens since the last log, all
      ranks and accumulation steps pooled) and `question_token_fraction`, next to TRL's own metrics
      (`mean_token_accuracy` and `entropy` pooled over the tokens since the last log, `num_tokens`). Every metric is
      summed on the device and reduced once per logging step: the training step itself never waits for the device.
    - The per-token CE comes from the kernel `args.loss_kernel` resolves to (see `SQLlavaSFTConfig`).
    - `create_optimizer`: groups for the LLM (`learning_rate`), `multi_modal_projector` (`projector_lr`) and
      `vision_tower` (`vision_lr`), weight decay where `get_decay_parameter_names` says, empty groups omitted.
    - Trainability audit at the first optimizer step (`args.audit_trainable`).
    - One skip report for the run (`skip_report`, `<output_dir>/skipped_samples.json`), the run failing above
      `args.max_skip_fraction` or on a step without any labelled token (`recipes/skip_report.py`).
    - Checkpoints renamed into place once complete, `resume_from_checkpoint=True`/`"latest"` taking the newest
      complete one, and a run fingerprint that a resumed run must match unless `args.allow_resume_changes`
      (`recipes/checkpoints.py`).

    Args: as `trl.SFTTrainer`; `args` must be a `SQLlavaSFTConfig` (or None for its defaults), plus
        skip_stats (`SkipStats`, *optional*): the load-time counts of the training data (`recipes.data`), the first
            part of the run's skip report; the complete report is merged into it at the end of training.
        group_by_modality_length (`bool`): LLaVA's length-grouped sampler.
        run_fingerprint (`dict`, *optional*): what the run trains (`recipes.checkpoints.run_fingerprint`), stored
            with each checkpoint; defaults to the fingerprint of `args` alone.
    """

    _tag_names = ["trl", "sft", "sqllava"]

    def __init__(
        self,
        model,
        args: SQLlavaSFTConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        skip_stats=None,
        group_by_modality_length: bool = False,
        run_fingerprint: dict | None = None,
        **kwargs,
    ):
        if args is None:
            args = SQLlavaSFTConfig()
        elif not isinstance(args, SQLlavaSFTConfig):
            raise TypeError(
                f"`args` must be a SQLlavaSFTConfig, got {type(args).__name__}; build one with the same fields "
                "plus the self-questioning options."
            )
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "SQLlavaTrainer computes the self-questioning loss itself; drop `compute_loss_func` (or subclass "
                "and override `compute_loss`)."
            )
        if processing_class is None:
            from transformers import AutoProcessor

            name_or_path = model if isinstance(model, str) else model.config._name_or_path
            processing_class = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=args.trust_remote_code)
        if data_collator is None:
            data_collator = SelfQuestioningCollator(
                processor=processing_class,
                sq_ratio=args.sq_ratio,
                seed=args.data_seed if args.data_seed is not None else args.seed,
                max_length=args.max_length,
                mode=args.stage,
                pad_to_multiple_of=args.pad_to_multiple_of,
                strict=args.strict_data,
                return_sample_ids=args.log_sample_ids,
                report_skips=True,
                max_image_pixels=args.max_image_pixels,
                max_image_aspect_ratio=args.max_image_aspect_ratio,
                padding_free=args.padding_free,
            )
        # Load-time skips (the same on every rank) and collate-time skips (reported in each batch, so the counts of
        # dataloader workers are not lost) make one report; `skip_stats` receives the complete one at the end.
        self.skip_stats = skip_stats if skip_stats is not None else SkipStats()
        self.skip_report = RunSkipReport(self.skip_stats, args.max_skip_fraction)
        self.final_skip_report: dict | None = None
        # Labelled tokens of the optimizer step: made on the labels' device at the first step, then zeroed in place.
        self._sq_micro_tokens: torch.Tensor | None = None
        self._sq_step_tokens: list = []
        self.run_fingerprint = run_fingerprint
        self._sq_staging_dir: str | None = None
        self.group_by_modality_length = group_by_modality_length
        # TRL accepts only `datasets` datasets, but `recipes.data` yields lazy torch datasets of canonical
        # records (no tokenization to prepare, images opened at collate time). TRL only inspects the first
        # sample, so it is given that sample as a one-row `datasets.Dataset`; the real datasets are set after.
        train_dataset, real_train = _as_trl_dataset(train_dataset)
        eval_dataset, real_eval = _as_trl_dataset(eval_dataset)
        callbacks = list(callbacks or [])
        if hasattr(data_collator, "set_epoch"):
            callbacks.append(_CollatorEpochCallback(data_collator))
        self._sq_step_saw_images = False
        self._sq_sample_ids: list[str] = []
        # TRL refuses `padding_free` for vision datasets and custom collators because its own collators cannot pack
        # images; the self-questioning collator does (above), so TRL is shown the option off while it initialises.
        padding_free, args.padding_free = args.padding_free, False
        try:
            super().__init__(
                model=model,
                args=args,
                data_collator=data_collator,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                callbacks=callbacks,
                **kwargs,
            )
        finally:
            args.padding_free = padding_free
        if real_train is not None:
            self.train_dataset = real_train
        if real_eval is not None:
            self.eval_dataset = real_eval
        # Our `compute_loss` always normalises by `num_items_in_batch` when given, whatever the model's forward
        # signature says, so let Trainer count it and leave the loss unscaled for gradient accumulation.
        self.model_accepts_loss_kwargs = True
        # The skip report first: a step on no labelled token is reported as such, before the audit would blame
        # the parameters for the gradients it did not get.
        self.add_callback(SkipReportCallback(self))
        self.add_callback(_TrainabilityAuditCallback(self))
        self.add_callback(_CheckpointEveryNLayersCallback(self))
        # Local sums since the last log, on the device (layout: `_SUM_INDEX`): made by the first micro-batch, zeroed
        # in place at each log.
        self._sq_sums: dict[str, torch.Tensor | None] = {"train": None, "eval": None}
        self._sq_loss_kernel = self._resolve_loss_kernel()
        self._sq_right_padded = (
            isinstance(self.data_collator, SelfQuestioningCollator) and self.data_collator.padding_side == "right"
        )
        if args.liger_kernels:
            from recipes.liger import _base_model, add_liger_lm_head, apply_liger_to_language_model, check_liger_usable

            check_liger_usable(args.device)
            apply_liger_to_language_model(self.model)
            add_liger_lm_head(_base_model(self.model))
        logger.info("Per-token cross-entropy: %s (loss_kernel=%r).", self._sq_loss_kernel, args.loss_kernel)

    def _resolve_loss_kernel(self) -> str:
        from trl.trainer import utils as trl_utils

        kernel = self.args.loss_kernel
        has_trl_head = hasattr(trl_utils, "add_fused_lm_head")
        if kernel == "auto":
            if self.args.liger_kernels:
                return "liger"
            # TRL's fused head runs Triton tiles on CUDA/XPU; elsewhere its torch fallback is slower than the plain
            # logits at small vocabularies (the embedded default on a CPU: recipes/run_tiny.py).
            return "trl" if has_trl_head and self.args.device.type in ("cuda", "xpu") else "logits"
        if kernel == "trl" and not has_trl_head:
            raise ValueError("`loss_kernel='trl'` needs a TRL with `add_fused_lm_head` (trl>=1.0); use 'logits'.")
        return kernel

    # ---- data ----

    def _get_train_sampler(self, train_dataset=None):
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        if not self.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        lengths = getattr(train_dataset, "modality_lengths", None)
        if lengths is None:
            raise ValueError(
                f"group_by_modality_length=True needs a dataset with `modality_lengths` (recipes.data datasets), "
                f"got {type(train_dataset).__name__}."
            )
        from recipes.data import ModalityLengthGroupedSampler

        # Whole optimizer steps are grouped (LLaVA): chunks for every rank and every accumulation step.
        return ModalityLengthGroupedSampler(
            lengths,
            batch_size=self.args.per_device_train_batch_size,
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """`Trainer.train`, where `resume_from_checkpoint=True` / `"latest"` means the newest *complete* checkpoint
        (skipped ones are logged with the reason), and a checkpoint whose run fingerprint differs from this run's
        is refused, with the differences, unless `args.allow_resume_changes`."""
        from recipes.checkpoints import SKIPS_NAME, read_fingerprint, resolve_resume_checkpoint

        resume = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        if resume is not None:
            self._check_resume_fingerprint(resume, read_fingerprint(resume))
            skips = os.path.join(resume, SKIPS_NAME)
            if os.path.isfile(skips):
                import json

                with open(skips, encoding="utf-8") as f:
                    self.skip_report.restore(json.load(f))
        result = super().train(resume_from_checkpoint=resume, trial=trial, **kwargs)
        if self.final_skip_report is not None:
            self.skip_stats.merge(SkipStats.from_dict(self.final_skip_report["collate"]))
        if self.args.log_sample_ids:
            import json

            os.makedirs(self.args.output_dir, exist_ok=True)
            path = os.path.join(self.args.output_dir, f"sample_ids_rank{self.args.process_index}.json")
            with open(path, "w") as f:
                json.dump(self._sq_sample_ids, f)
        return result

    def training_step(self, model, inputs, *args, **kwargs):
        # The collator's report of what it dropped travels with the batch (out of dataloader workers) to here.
        report = inputs.pop("skip_report", None)
        if report is not None:
            self.skip_report.add_batch(report)
        labels = inputs.get("labels")
        if labels is not None:
            # Labelled tokens of the step, kept on the device: checked for zero at the first step and each log.
            tokens = (labels[:, 1:] != IGNORE_INDEX).sum()
            if self._sq_micro_tokens is None or self._sq_micro_tokens.device != tokens.device:
                self._sq_micro_tokens = torch.zeros((), dtype=torch.long, device=tokens.device)
            self._sq_micro_tokens += tokens
        return super().training_step(model, inputs, *args, **kwargs)

    # ---- checkpoints ----

    def current_fingerprint(self) -> dict:
        from recipes.checkpoints import run_fingerprint

        if self.run_fingerprint is not None:
            return self.run_fingerprint
        return run_fingerprint(self.args, world_size=self.args.world_size)

    def _check_resume_fingerprint(self, checkpoint: str, saved: dict | None) -> None:
        from recipes.checkpoints import fingerprint_differences

        if saved is None:
            logger.warning(
                "%s stores no run fingerprint: resuming without checking that the run is the same.", checkpoint
            )
            return
        differences = fingerprint_differences(saved, self.current_fingerprint())
        if not differences:
            return
        listed = "\n".join(f"  - {d}" for d in differences)
        note = (
            "The checkpoint's optimizer and learning-rate schedule are restored as saved: a changed learning rate "
            "or schedule does not take effect."
        )
        if not self.args.allow_resume_changes:
            raise ValueError(
                f"Resuming from {checkpoint} with a different run:\n{listed}\nResume with the checkpoint's settings "
                f"and data, start a new output_dir, or pass --allow_resume_changes to resume anyway. {note}"
            )
        logger.warning(
            "Resuming from %s with a different run (allow_resume_changes):\n%s\n%s", checkpoint, listed, note
        )

    def _get_output_dir(self, trial):
        # While a checkpoint is saved, Trainer writes it under the staging folder (see `_save_checkpoint`).
        return self._sq_staging_dir if self._sq_staging_dir is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """Save `checkpoint-N` atomically: every rank writes into `.partial-checkpoint-N/checkpoint-N`, the main
        process adds the manifest (files and sizes, run fingerprint) and the run's skip counts so far, and renames
        the folder into place; older checkpoints are rotated out only after that. A job killed at any moment leaves
        either the complete checkpoint or none (plus a `.partial-*` folder that resuming ignores, with a log line)."""
        import shutil

        from recipes.checkpoints import (
            SKIPS_NAME,
            STAGING_PREFIX,
            fsync_directory,
            rotate_checkpoints,
            write_json_durably,
            write_manifest,
        )
        from recipes.skip_report import report_dict

        run_dir = super()._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        final = os.path.join(run_dir, name)
        staging = os.path.join(run_dir, STAGING_PREFIX + name)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # a save of this step that was killed earlier
            os.makedirs(staging, exist_ok=True)
        self.accelerator.wait_for_everyone()
        # Trainer's own rotation and Hub push would act on the staging folder: both run after the rename instead.
        limit, push = self.args.save_total_limit, self.args.push_to_hub
        self.args.save_total_limit, self.args.push_to_hub = None, False
        self._sq_staging_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._sq_staging_dir = None
            self.args.save_total_limit, self.args.push_to_hub = limit, push
        written = os.path.join(staging, name)
        collate = self.skip_report.gather_collate(self.accelerator)  # a collective: before the main-only part
        self.accelerator.wait_for_everyone()  # every rank's files (shards, RNG states) are written
        if self.args.should_save:
            best = self.state.best_model_checkpoint
            if best is not None and os.path.normpath(best).startswith(os.path.normpath(staging)):
                self.state.best_model_checkpoint = final
                self.state.save_to_json(os.path.join(written, "trainer_state.json"))
            write_json_durably(
                os.path.join(written, SKIPS_NAME), report_dict(self.skip_stats, collate, self.args.max_skip_fraction)
            )
            write_manifest(
                written,
                fingerprint=self.current_fingerprint(),
                world_size=self.args.world_size,
                save_only_model=bool(self.args.save_only_model),
            )
            if os.path.isdir(final):  # the same step saved again (e.g. after resuming from it): replace it
                os.replace(final, os.path.join(staging, "replaced"))
            os.replace(written, final)
            shutil.rmtree(staging)
            fsync_directory(run_dir)
            rotate_checkpoints(run_dir, limit, keep=(self.state.best_model_checkpoint,))
        self.accelerator.wait_for_everyone()
        if push:
            self._push_from_checkpoint(final)

    # ---- loss ----

    def _per_token_ce(self, model, inputs):
        """Per-token CE of the next-token labels `(B, T-1)` (0 where ignored), the label mask, and the per-token
        entropy and top-1 hits for the metrics (None where the kernel does not give them)."""
        if self._sq_loss_kernel in ("trl", "liger"):
            flag = "fused_lm_head" if self._sq_loss_kernel == "trl" else "liger_lm_head"
            outputs = model(**inputs, **{flag: True})
            return -outputs.log_probs, outputs.label_mask, outputs.entropy, outputs.is_top1
        # CE from the logits, built only at the positions whose next token is labelled in some row: the system
        # prompt, the images and the user turns never are, so the LM head and the softmax skip most of each sequence.
        # (`nonzero` waits for the device, which is why "auto" picks the fused heads on accelerators.)
        shift_labels = inputs["labels"][:, 1:]
        mask = shift_labels != IGNORE_INDEX
        positions = mask.any(0).nonzero().squeeze(-1)
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**model_inputs, logits_to_keep=positions)
        logits = outputs.logits
        # Half-precision logits are upcast; float32 / float64 stay as they are (the float64 tests compare exactly).
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        log_probs = torch.log_softmax(logits, dim=-1)  # (B, positions, vocab)
        targets = shift_labels[:, positions]
        kept_ce = -log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        ce = kept_ce.new_zeros(mask.shape)
        ce[:, positions] = kept_ce
        with torch.no_grad():
            entropy = ce.new_zeros(mask.shape)
            entropy[:, positions] = -(log_probs.exp() * log_probs).sum(-1)
            is_top1 = torch.zeros_like(mask)
            is_top1[:, positions] = log_probs.argmax(-1) == targets
        return ce.masked_fill(~mask, 0.0), mask, entropy, is_top1

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        question_mask = inputs.get("question_mask")
        if "sample_ids" in inputs and mode == "train":
            self._sq_sample_ids.extend(inputs["sample_ids"])
        model_inputs = {k: v for k, v in inputs.items() if k not in ("question_mask", "sample_ids", "skip_report")}
        model_inputs["use_cache"] = False
        if self._sq_right_padded:
            # Right padding needs no attention mask in a causal model: no real token can see the padding after it,
            # and the padding's own positions are never labelled. Without a mask SDPA runs its causal kernel (flash
            # attention on GPUs) instead of a masked one; loss and gradients are unchanged (tests/test_packing.py).
            model_inputs.pop("attention_mask", None)
        if model_inputs.get("pixel_values") is not None:
            self._sq_step_saw_images = True

        per_token_ce, label_mask, entropy, is_top1 = self._per_token_ce(model, model_inputs)
        if question_mask is None:
            is_question = torch.zeros_like(label_mask)
        else:
            is_question = question_mask[:, 1:].to(label_mask.device) & label_mask
        weighted = per_token_ce
        if self.args.sq_loss_weight != 1.0:
            weight = torch.where(is_question, self.args.sq_loss_weight, 1.0).to(per_token_ce.dtype)
            weighted = per_token_ce * weight
        num_tokens = label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        # Clamped so that a batch without trained tokens gives a finite zero, not 0 / 0.
        loss = weighted.sum() / torch.as_tensor(num_tokens, device=weighted.device).clamp(min=1)
        # As in TRL / transformers: `num_items_in_batch` counts every rank's tokens and DDP averages gradients.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())

        with torch.no_grad():
            self._accumulate_metrics(mode, inputs, per_token_ce, label_mask, is_question, entropy, is_top1)

        if return_outputs:
            with torch.no_grad():
                outputs = model(**{k: v for k, v in model_inputs.items() if k != "labels"})
            return loss, outputs
        return loss

    def _accumulate_metrics(self, mode, inputs, per_token_ce, label_mask, is_question, entropy, is_top1):
        """Add this micro-batch's metric sums to the device buffer: no `.item()`, no collective, so no host sync.

        TRL's `SFTTrainer.compute_loss` gathers and `.item()`s its metrics at every step, which stalls the device
        once per micro-batch; here they are reduced in `log` (see `_SUM_INDEX` for the layout).
        """
        ce = per_token_ce.detach().double()
        is_answer = label_mask & ~is_question
        zero = ce.new_zeros(())
        if "attention_mask" in inputs:
            attended = inputs["attention_mask"].sum().to(ce.device).double()
        else:  # packed (padding-free) batches have no padding at all (a constant made on the device: no copy)
            attended = ce.new_full((), inputs["input_ids"].numel(), dtype=torch.float64)
        sums = torch.stack(
            [
                (ce * is_answer).sum(),
                is_answer.sum().double(),
                (ce * is_question).sum(),
                is_question.sum().double(),
                zero if entropy is None else (entropy.detach().double() * label_mask).sum(),
                zero if entropy is None else label_mask.sum().double(),
                zero if is_top1 is None else (is_top1.bool() & label_mask).sum().double(),
                zero if is_top1 is None else label_mask.sum().double(),
                attended if mode == "train" else zero,
            ]
        )
        if self._sq_sums[mode] is None or self._sq_sums[mode].device != sums.device:
            self._sq_sums[mode] = torch.zeros(_NUM_SUMS, dtype=torch.float64, device=sums.device)
        self._sq_sums[mode] += sums

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        # Every rank calls `log`, so the sums are reduced here once per logging step rather than at every step.
        local = self._sq_sums[mode]
        if local is None:  # nothing accumulated yet in this mode (every rank still joins the reduction)
            local = torch.zeros(_NUM_SUMS, dtype=torch.float64, device=self.accelerator.device)
        sums = local.to(self.accelerator.device)
        sums = self.accelerator.reduce(sums, reduction="sum") if self.accelerator.num_processes > 1 else sums
        values = dict(zip(_SUM_INDEX, sums.tolist()))
        local.zero_()  # after `tolist`, which has read the sums
        answer_tokens, question_tokens = values["answer_tokens"], values["question_tokens"]
        prefix = "eval_" if mode == "eval" else ""
        if answer_tokens + question_tokens > 0:
            if answer_tokens > 0:
                logs[f"{prefix}loss_answer"] = values["answer_ce"] / answer_tokens
            if question_tokens > 0:
                logs[f"{prefix}loss_question"] = values["question_ce"] / question_tokens
            logs[f"{prefix}question_token_fraction"] = question_tokens / (answer_tokens + question_tokens)
        # TRL's metrics, from the pooled sums (SFTTrainer.log averages whatever `_metrics` holds, then clears it).
        if values["entropy_tokens"] > 0:
            self._metrics[mode]["entropy"] = [values["entropy"] / values["entropy_tokens"]]
        if values["top1_tokens"] > 0:
            self._metrics[mode]["mean_token_accuracy"] = [values["top1"] / values["top1_tokens"]]
        if mode == "train":
            self._total_train_tokens += int(values["attended_tokens"]) // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        super().log(logs, start_time)

    # ---- optimizer ----

    def create_optimizer(self, model=None):
        opt_model = self.model if model is None else model
        if self.optimizer is not None:
            return self.optimizer
        groups = build_parameter_groups(
            opt_model,
            self.get_decay_parameter_names(opt_model),
            learning_rate=self.args.learning_rate,
            weight_decay=self.args.weight_decay,
            projector_lr=self.args.projector_lr,
            vision_lr=self.args.vision_lr,
        )
        if not groups:
            raise ValueError("No parameter requires grad, so nothing would train: add LoRA adapters or unfreeze.")
        for group in groups:
            logger.info(
                "Optimizer group %-18s %4d tensors %12d parameters  lr %.3g  weight_decay %.3g",
                group["name"],
                len(group["params"]),
                sum(p.numel() for p in group["params"]),
                group["lr"],
                group["weight_decay"],
            )
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs = dict(optimizer_kwargs)
        special = {"params", "model", "optimizer_dict"} & set(optimizer_kwargs)
        if special:
            raise ValueError(
                f"optim={self.args.optim!r} builds its own parameter groups ({sorted(special)}), which would drop "
                "projector_lr / vision_lr. Use an AdamW-family `optim` (e.g. 'adamw_torch')."
            )
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer


_SUM_INDEX = (
    "answer_ce",
    "answer_tokens",
    "question_ce",
    "question_tokens",
    "entropy",
    "entropy_tokens",
    "top1",
    "top1_tokens",
    "attended_tokens",
)
_NUM_SUMS = len(_SUM_INDEX)


def _as_trl_dataset(dataset):
    """`(dataset for TRL's checks, real dataset or None)`: torch datasets pass through a one-row stand-in."""
    import datasets

    if dataset is None or isinstance(dataset, (datasets.Dataset, datasets.IterableDataset, dict)):
        return dataset, None
    if not isinstance(dataset, torch.utils.data.Dataset):
        raise TypeError(
            f"`train_dataset` / `eval_dataset` must be a datasets.Dataset or a torch Dataset of canonical "
            f"records, got {type(dataset).__name__}."
        )
    if len(dataset) == 0:
        raise ValueError(f"The dataset {dataset!r} is empty: check the data paths and the skip statistics.")
    first = dict(dataset[0])
    # Only the keys matter to TRL (it looks for "images"); paths / PIL images are kept out of Arrow.
    stand_in = datasets.Dataset.from_list([{"id": str(first.get("id")), "images": [], "messages": first["messages"]}])
    return stand_in, dataset
