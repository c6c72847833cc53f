"""liger-kernel for the Llama inside SQ-LLaVA (optional extra: `pip install "sqllava[liger]"`, CUDA only).

TRL's `use_liger_kernel` and transformers' `apply_liger_kernel` patch a model by its `model_type`, and `sqllava` is
not one liger knows, so nothing would be replaced. Here the kernels go where SQ-LLaVA's Llama is:

- [`apply_liger_to_language_model`]: liger's RMSNorm, SwiGLU MLP and RoPE on the inner language model
  (`model.model.language_model`, a `LlamaModel`), through liger's own `apply_liger_kernel_to_llama(model=...)`. The
  vision tower and the projector are untouched. As liger documents, its RoPE (and, for models built afterwards, its
  RMSNorm / MLP classes) are installed on transformers' `modeling_llama` module, so they apply to every Llama of the
  process, not only this one; the instance patches cover the already-built model.
- [`add_liger_lm_head`]: liger's fused linear cross-entropy as the LM head + loss, called through the model's own
  forward (`model(..., liger_lm_head=True)`) so that DDP / DeepSpeed wrappers see the call. It never builds the
  `B x T x vocab` logits and returns per-token losses (`reduction="none"`, correct in backward from liger-kernel
  0.8.2 on), which the trainer splits into answer and question losses exactly as on the other loss paths.

Example:

```python
>>> from recipes.liger import add_liger_lm_head, apply_liger_to_language_model, check_liger_usable
>>> check_liger_usable(torch.device("cuda"))
>>> apply_liger_to_language_model(model)  # RMSNorm, SwiGLU, RoPE on model.model.language_model
>>> add_liger_lm_head(model)
>>> out = model(**batch, liger_lm_head=True)  # out.log_probs: (B, T-1), zero where the label is -100
```
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from dataclasses import dataclass

import torch

from recipes.collator import IGNORE_INDEX

LIGER_MIN_VERSION = "0.8.2"  # the first release whose reduction="none" backward is correct (liger-kernel #1298)
LIGER_INSTALL_HINT = f'pip install "sqllava[liger]" (liger-kernel>={LIGER_MIN_VERSION}, needs CUDA + Triton)'


def is_liger_available() -> bool:
    """Whether liger-kernel is importable (its version is checked by [`check_liger_usable`])."""
    return importlib.util.find_spec("liger_kernel") is not None


def check_liger_usable(device: torch.device | str) -> None:
    """Raise a clear error unless liger-kernel (recent enough) is installed and `device` is a CUDA device.

    Args:
        device: the device training runs on (`TrainingArguments.device`).
    """
    from packaging.version import Version

    if not is_liger_available():
        raise ImportError(f"`liger_kernels=True` needs liger-kernel, which is not installed: {LIGER_INSTALL_HINT}.")
    version = importlib.metadata.version("liger-kernel")
    if Version(version) < Version(LIGER_MIN_VERSION):
        raise ImportError(
            f"`liger_kernels=True` needs liger-kernel>={LIGER_MIN_VERSION} (per-token fused cross-entropy with a "
            f"correct backward), found {version}: {LIGER_INSTALL_HINT}."
        )
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(
            f"`liger_kernels=True` needs a CUDA device: liger-kernel's kernels are Triton GPU kernels, and training "
            f"runs on {device}. Set `liger_kernels=False` (the default) on this machine."
        )


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The `SQLlavaForConditionalGeneration` under PEFT / DDP wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP, DeepSpeed engine
        model = model.module
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    return model


def language_model_of(model: torch.nn.Module) -> torch.nn.Module:
    """The inner language model (`LlamaModel`) of an SQ-LLaVA model, PEFT-wrapped or not."""
    base = _base_model(model)
    if not hasattr(base, "get_decoder"):
        raise TypeError(f"Expected an SQ-LLaVA model (with `get_decoder`), got {type(base).__name__}.")
    return base.get_decoder()


def apply_liger_to_language_model(
    model: torch.nn.Module, *, rope: bool = True, rms_norm: bool = True, swiglu: bool = True
) -> torch.nn.Module:
    """Replace RMSNorm, the SwiGLU MLP and RoPE of the inner Llama with liger's kernels; returns that Llama.

    LoRA layers inside the MLP keep working: liger's SwiGLU forward calls the (LoRA-wrapped) `gate_proj`, `up_proj`
    and `down_proj` modules and only fuses `silu(gate) * up`.

    Args:
        model: an `SQLlavaForConditionalGeneration`, PEFT-wrapped or not.
        rope, rms_norm, swiglu: which kernels to apply (liger's `apply_liger_kernel_to_llama` arguments).
    """
    language_model = language_model_of(model)
    model_type = getattr(language_model.config, "model_type", None)
    if model_type != "llama":
        raise ValueError(
            f"liger kernels are wired for a Llama language model (Vicuna, as in SQ-LLaVA); this model's language "
            f"model has model_type={model_type!r}. Set `liger_kernels=False`."
        )
    from liger_kernel.transformers import apply_liger_kernel_to_llama

    # Cross-entropy stays off here: the loss is computed by `add_liger_lm_head` (or TRL's fused head).
    apply_liger_kernel_to_llama(
        rope=rope,
        rms_norm=rms_norm,
        swiglu=swiglu,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
        model=language_model,
    )
    return language_model


@dataclass
class LigerLMHeadOutput:
    """What `model(..., liger_lm_head=True)` returns (the fields `SQLlavaTrainer` reads, as TRL's fused head).

    Args:
        log_probs: `(B, T-1)` log-probability of each next-token label, 0 where the label is -100.
        label_mask: `(B, T-1)` whether the label is not -100.
        is_top1: `(B, T-1)` whether the label is the arg-max token (no gradient).
        entropy: not computed by liger's kernel (None).
    """

    log_probs: torch.Tensor
    label_mask: torch.Tensor
    is_top1: torch.Tensor | None = None
    entropy: torch.Tensor | None = None


def add_liger_lm_head(model: torch.nn.Module) -> None:
    """Let `model(..., labels=labels, liger_lm_head=True)` return per-token losses from liger's fused linear CE.

    The instance's `forward` is wrapped (like TRL's `add_fused_lm_head`): without `liger_lm_head=True` the previous
    forward runs unchanged (generation, TRL's fused head, the plain logits). With it, the backbone runs, and the LM
    head and cross-entropy are fused by liger over the shifted labels, in chunks, never building the logits.

    Args:
        model: the `SQLlavaForConditionalGeneration` instance (under PEFT: `peft_model.get_base_model()`).
    """
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    previous_forward = model.forward
    loss_function = LigerFusedLinearCrossEntropyLoss(
        ignore_index=IGNORE_INDEX, reduction="none", return_token_accuracy=True
    )

    @functools.wraps(type(model).forward)
    def _liger_forward(self, *args, liger_lm_head: bool = False, labels=None, num_items_in_batch=None, **kwargs):
        if not liger_lm_head:
            if labels is not None:
                kwargs["labels"] = labels
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return previous_forward(*args, **kwargs)
        if labels is None:
            raise ValueError("`liger_lm_head=True` computes the loss: pass `labels`.")
        kwargs["use_cache"] = False
        hidden_states = self.model(*args, **kwargs).last_hidden_state[:, :-1]
        shift_labels = labels[:, 1:].to(hidden_states.device)
        lm_head = self.get_output_embeddings()
        result = loss_function(
            lm_head.weight,
            hidden_states.reshape(-1, hidden_states.shape[-1]),
            shift_labels.reshape(-1),
            lm_head.bias,
        )
        label_mask = shift_labels != IGNORE_INDEX
        is_top1 = None if result.token_accuracy is None else result.token_accuracy.view(label_mask.shape).bool()
        return LigerLMHeadOutput(log_probs=-result.loss.view(label_mask.shape), label_mask=label_mask, is_top1=is_top1)

    model.forward = _liger_forward.__get__(model, type(model))
