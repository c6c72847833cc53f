"""Turn a training output into a verified, Hub-ready SQ-LLaVA folder.

```bash
# stage-2 output: the stage-1 folder + the PEFT adapter (LLM-LoRA + ViT-LoRA + projector) that recipes/finetune.py saved
python -m hub_upload.export --base-model outputs/sqllava-7b-pretrain --adapter outputs/sqllava-7b-finetune \
    --output-dir outputs/sqllava-7b-hf --dtype bfloat16 --repo-id your-name/sqllava-7b
# a full checkpoint (no adapter): re-cast, re-shard, add code files and card, verify
python -m hub_upload.export --base-model outputs/sqllava-7b-full --output-dir outputs/sqllava-7b-hf
```

What the folder holds: sharded safetensors (no pickle file), `config.json` with an `auto_map` for `AutoConfig`,
`AutoModel`, `AutoModelForImageTextToText` and `AutoModelForVision2Seq`, the flat code files
(`configuration_sqllava.py`, `modeling_sqllava.py`, `processing_sqllava.py` and whatever they import relatively), the
processor (image processor, tokenizer, chat template, `processor_config.json` with an `AutoProcessor` `auto_map`),
`generation_config.json` and a model card `README.md`.

Every LoRA layer of the adapter is merged, in the vision tower as well as in the language model (the public SQ-LLaVA
merge script silently drops the ViT adapter), and the merge is done in float32 before casting to the export dtype.

Verification, before anything is published: the folder is reloaded in a fresh Python process (`python -I`, working
directory a temporary folder, no `PYTHONPATH`, so this repository cannot be imported; the model and processor
classes must come from the folder's remote code) through
`AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)` and `AutoProcessor`, and its logits on
a fixed input (BOS, text tokens around a full block of image tokens, a seeded pixel tensor) are compared with those of
the unmerged float32 model. Before that process starts, the folder's code files must be byte for byte the ones this
installation ships (`recipes.loading.foreign_code_files`): the only code the verification runs is sqllava's own.
The error reported is `max |logits - reference| / max |reference|` (normalised by the largest reference logit: an
element-wise ratio is meaningless for logits near zero).

The prototype extractor assigns each patch to one prototype by a hard argmax. Where two prototypes are (near-)tied,
rounding the weights to half precision legitimately picks the other one, and the logits move by far more than the
rounding itself: on the 12 x 12-patch, 144-prototype checkpoint of `tests/test_convert.py`, one patch whose two best
prototypes differ by 6e-8 in float32 flips under float16 rounding and moves the logits by 9.4e-2, 19x the float16
tolerance, although the conversion is right. So the check is split in two:

- **Is the merge right?** The reloaded model runs with its prototype assignments pinned to those of the float32
  reference (`PrototypeAssignments`, a `TorchFunctionMode` that replays the reference's argmax; the model code is not
  touched), so the comparison sees only the weights: a wrong merge (a dropped adapter, a wrong scaling, a lost
  projector) moves the logits by percents with the assignments pinned too.
- **How many near-tied patches flip?** Reported, not judged: `prototype_flip_fraction` (patches whose unpinned
  assignment differs from the reference's) and `prototype_flip_max_margin` (the largest reference similarity gap
  between the two prototypes of a flipped patch: small for a flip caused by rounding), with the unpinned error
  `unpinned_relative_error` beside them.

Two comparisons, both pinned:

1. The folder loaded in float32 (the stored values upcast exactly), so the error is what the export itself changed:
   the merge and the rounding of the weights to the export dtype. Bound `VERIFY_TOLERANCES[dtype]`:
   - float32: 1e-4. Merging only reorders float32 arithmetic (`(W + s B A) x` vs `W x + s B (A x)`): measured
     4.0e-7 on the tiny test model; 1e-4 leaves room for deep 7B/13B stacks while any real mistake moves logits by
     percents.
   - float16: 5e-3. Every weight is rounded with unit round-off 2^-11 ~ 4.9e-4; measured 4.8e-4 (tiny model),
     10x headroom.
   - bfloat16: 3e-2. Unit round-off 2^-8 ~ 3.9e-3, 8x coarser than float16; measured 4.1e-3 (tiny model), ~7x
     headroom for deeper stacks.
2. For float16/bfloat16, the same model cast back to the export dtype (exact) and run in it: what a user gets.
   Half-precision kernels add their own rounding of every activation: measured 9.7e-4 (float16) and 7.3e-3
   (bfloat16) on the tiny model with the assignments pinned, against 4.4e-2 and 4.0e-2 unpinned, where 19% and 56%
   of its 16 patches land on another prototype (half-precision similarities tie far more often). The bound
   `NATIVE_TOLERANCES = 0.15` stays a smoke bound: it catches broken half-precision paths (overflow, NaN, a missing
   cast give O(1) errors), not precision. Its flips are reported as `native_prototype_flip_fraction`.

A failed verification raises `ExportVerificationError`; the folder is left on disk for inspection and must not be
published.

Every file the export reads is checked first, so that a damaged input fails with the file and the key named
(`hub_upload.files`): a truncated safetensors file, a config value of the wrong type, an adapter whose weights lack
tensors its config and the base model call for (PEFT alone would only warn and merge a zero update).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPORT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Justified in the module docstring.
VERIFY_TOLERANCES = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}
NATIVE_TOLERANCES = {"float16": 0.15, "bfloat16": 0.15}
MODEL_AUTO_MAP = {
    "AutoConfig": "configuration_sqllava.SQLlavaConfig",
    "AutoModel": "modeling_sqllava.SQLlavaModel",
    "AutoModelForImageTextToText": "modeling_sqllava.SQLlavaForConditionalGeneration",
    "AutoModelForVision2Seq": "modeling_sqllava.SQLlavaForConditionalGeneration",
}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_sqllava.SQLlavaProcessor"}
# The shipped code files; whatever they import relatively is added by `code_files()`.
CODE_ENTRY_FILES = (
    REPO_ROOT / "modeling_sqllava" / "configuration_sqllava.py",
    REPO_ROOT / "modeling_sqllava" / "modeling_sqllava.py",
    REPO_ROOT / "processing" / "processing_sqllava.py",
    REPO_ROOT / "processing" / "tokenization_sqllava.py",  # AutoTokenizer's class (imported by the processor too)
)
# Files a processor/tokenizer save may write that tell a folder holds a processor.
_PROCESSOR_MARKERS = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
# Fixed verification input: this many text tokens before and after the image block.
_VERIFY_TEXT_TOKENS = (8, 12)
_VERIFY_SEED = 1234


class ExportVerificationError(RuntimeError):
    """The exported folder does not reproduce the source model: it must not be published."""


# --------------------------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------------------------


def export_model(
    *,
    base_model: str,
    adapter: str | None = None,
    output_dir: str,
    dtype: str = "bfloat16",
    max_shard_size: str = "5GB",
    repo_id: str | None = None,
    training_config: Mapping[str, Any] | None = None,
    train_metrics: Mapping[str, Any] | None = None,
    eval_results: Mapping[str, Any] | None = None,
    verify: bool = True,
    base_model_id_for_card: str | list[str] | None = None,
    datasets: str | list[str] | None = None,
    license: str = "llama2",
    device: str = "cpu",
) -> dict[str, Any]:
    r"""Merge a training output into one Hub-ready folder and verify it in a fresh process.

    Args:
        base_model (`str`):
            Folder (or Hub id) of a complete `SQLlavaForConditionalGeneration` checkpoint: the stage-1 output when
            `adapter` is given, else the full checkpoint to export.
        adapter (`str`, *optional*):
            Folder of the PEFT adapter saved by `recipes/finetune.py`: LLM-LoRA and ViT-LoRA in one adapter, the
            projector as `modules_to_save`. Every LoRA layer is merged into the towers.
        output_dir (`str`): where the export is written (created; existing files with the same names are replaced).
        dtype (`str`, *optional*, defaults to `"bfloat16"`): `"bfloat16"`, `"float16"` or `"float32"`.
        max_shard_size (`str`, *optional*, defaults to `"5GB"`): safetensors shard size.
        repo_id (`str`, *optional*): the Hub repo the card's usage snippets name (default `your-name/<folder name>`).
        training_config (`Mapping`, *optional*): the training configuration actually used, shown in the card (keys
            that look like secrets are redacted).
        train_metrics (`Mapping`, *optional*): `Trainer.train()` metrics or measured figures (training time,
            tokens/s, peak memory, ...), shown in the card.
        eval_results (`Mapping`, *optional*): evaluation results for the card (`{"GQA": {"accuracy": 63.2}}`).
        verify (`bool`, *optional*, defaults to `True`): reload the folder in a fresh process and compare logits.
        base_model_id_for_card (`str` or `list[str]`, *optional*): Hub id(s) for the card's `base_model` metadata
            (default: the Hub ids the towers were loaded from, recorded in the config, else `base_model` when it is
            a Hub id; no `base_model` metadata when the weights come from local folders only).
        datasets (`str` or `list[str]`, *optional*): Hub ids of the training datasets, for the card.
        license (`str`, *optional*, defaults to `"llama2"`): Hub license id (Vicuna/Llama-2 weights).
        device (`str`, *optional*, defaults to `"cpu"`): device for the reference forward and the verification.

    Returns:
        `dict`: `output_dir`, `files` (relative paths), `dtype`, `lora_layers` (merged LoRA layers per tower),
        `verified`, `max_relative_error`, `max_absolute_error`, `tolerance` (float32 reload of the stored weights),
        `native_relative_error`, `native_tolerance` (forward in the export dtype; `None` for float32) and
        `loaded_with` (classes and transformers version of the fresh process).

    Raises:
        ValueError: on an unknown `dtype`, a missing base model or adapter folder.
        ExportVerificationError: when the reloaded folder does not reproduce the unmerged model.

    Example:

    ```python
    >>> report = export_model(
    ...     base_model="outputs/sqllava-7b-pretrain", adapter="outputs/sqllava-7b-finetune",
    ...     output_dir="outputs/sqllava-7b-hf", dtype="bfloat16", repo_id="your-name/sqllava-7b",
    ... )  # doctest: +SKIP
    >>> report["max_relative_error"] < report["tolerance"]  # doctest: +SKIP
    True
    ```
    """
    _check_dtype(dtype)
    if adapter is not None and not Path(adapter, "adapter_config.json").is_file():
        raise ValueError(
            f"adapter={adapter!r} holds no adapter_config.json; pass the folder recipes/finetune.py wrote (the PEFT "
            "adapter), or no adapter to export a full checkpoint."
        )
    model = load_model_float32(base_model)
    lora_layers = {"vision_tower": 0, "language_model": 0, "other": 0}
    if adapter is not None:
        model = load_adapter(model, adapter)
        lora_layers = count_lora_layers(model)
        if sum(lora_layers.values()) == 0:
            raise ValueError(f"adapter={adapter!r} holds no LoRA layer; nothing to merge.")
    model.to(device)

    inputs = fixed_verification_inputs(model.config if adapter is None else model.base_model.model.config)
    reference = compute_reference(model, inputs) if verify else None

    if adapter is not None:
        model = model.merge_and_unload(progressbar=False, safe_merge=True)
        leftover = count_lora_layers(model)
        if sum(leftover.values()):
            raise RuntimeError(f"LoRA layers left after merge_and_unload: {leftover}.")
    processor = load_processor([p for p in (adapter, base_model) if p is not None])

    card = build_model_card(
        model.config,
        repo_id=repo_id or f"your-name/{Path(output_dir).resolve().name}",
        base_model=base_model,
        base_model_id_for_card=base_model_id_for_card,
        training_config=training_config,
        train_metrics=train_metrics,
        eval_results=eval_results,
        datasets=datasets,
        license=license,
        merged_lora=lora_layers,
    )
    files = write_export_folder(
        model, processor, output_dir, dtype=dtype, max_shard_size=max_shard_size, model_card=card
    )
    del model
    gc.collect()

    report: dict[str, Any] = {
        "output_dir": str(output_dir),
        "files": files,
        "dtype": dtype,
        "lora_layers": lora_layers,
        "verified": False,
        "max_relative_error": None,
        "max_absolute_error": None,
        "tolerance": VERIFY_TOLERANCES[dtype],
        "native_relative_error": None,
        "native_tolerance": NATIVE_TOLERANCES.get(dtype),
    }
    if verify:
        report.update(verify_export_folder(output_dir, inputs, reference, dtype=dtype, device=device))
    else:
        logger.warning("Verification skipped (verify=False): %s was not checked against the source model.", output_dir)
    return report


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


def _check_dtype(dtype: str) -> torch.dtype:
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {sorted(EXPORT_DTYPES)}.")
    return EXPORT_DTYPES[dtype]


def load_model_float32(path: str):
    """`SQLlavaForConditionalGeneration` from `path` in float32 (merging and the reference forward run in float32).

    A local folder's `config.json` and safetensors files are checked first, so that a damaged checkpoint fails with
    the file and key named; the package's own class is used, nothing from the folder runs.
    """
    from hub_upload.files import SQLLAVA_TYPES, check_safetensors_in, check_types, read_json
    from modeling_sqllava import SQLlavaConfig, SQLlavaForConditionalGeneration

    local = Path(path).is_dir()
    if not local and (Path(path).exists() or path.count("/") != 1):
        raise ValueError(f"base_model={path!r} is neither a folder nor a Hub id; pass the stage-1/full model folder.")
    where = Path(path, "config.json") if local else f"{path} (config.json)"
    if local:
        payload = read_json(where, what="the SQ-LLaVA config.json of the base model")
        check_types(payload, SQLLAVA_TYPES, where)
        check_safetensors_in(path)
    try:
        config = SQLlavaConfig.from_pretrained(path)
    except (ValueError, TypeError) as error:  # SQLlavaConfig validates its arguments and names them
        raise type(error)(f"{where}: {error}") from None
    model, info = SQLlavaForConditionalGeneration.from_pretrained(
        path, config=config, dtype=torch.float32, output_loading_info=True
    )
    problems = {
        key: sorted(value) for key, value in info.items() if key in ("missing_keys", "unexpected_keys") and value
    }
    if problems:
        files = sorted(p.name for p in Path(path).glob("*.safetensors*")) if local else []
        raise ValueError(
            f"base_model={path!r}: the weights ({', '.join(files) or 'model files'}) do not match the SQ-LLaVA "
            f"architecture of its config.json: {problems}."
        )
    return model.eval()


def load_adapter(model, adapter: str):
    """`PeftModel` of `model` with the adapter in `adapter`, checked: readable files, typed config, no tensor missing.

    PEFT itself only warns when the adapter weights lack tensors the config asks for (the missing LoRA B matrices stay
    zero, so the merge silently drops them); here that is an error naming the file and the keys.
    """
    from peft import PeftModel, get_peft_model_state_dict

    from hub_upload.files import LORA_ADAPTER_TYPES, check_types, read_json, state_file_keys
    from recipes.common import peft_checkpointing_warning_silenced

    folder = Path(adapter)
    config_path = folder / "adapter_config.json"
    check_types(read_json(config_path, what="the PEFT adapter_config.json"), LORA_ADAPTER_TYPES, config_path)
    weights = [
        folder / name for name in ("adapter_model.safetensors", "adapter_model.bin") if (folder / name).is_file()
    ]
    if not weights:
        raise ValueError(
            f"{folder}: no adapter_model.safetensors (or .bin); pass the folder recipes/finetune.py wrote."
        )
    stored = set(state_file_keys(weights[0]))  # PEFT reads the same file, safetensors first
    try:
        with peft_checkpointing_warning_silenced():
            peft_model = PeftModel.from_pretrained(model, adapter, is_trainable=False).eval()
    except (ValueError, TypeError, KeyError, RuntimeError) as error:
        raise ValueError(f"{folder}: PEFT could not apply the adapter to the base model ({error}).") from None
    expected = set(get_peft_model_state_dict(peft_model))
    missing, unexpected = sorted(expected - stored), sorted(stored - expected)
    if missing or unexpected:
        raise ValueError(
            f"{weights[0]} does not match its adapter_config.json and the base model: missing tensors "
            f"{missing[:10]}{' ...' if len(missing) > 10 else ''} ({len(missing)}), unexpected tensors "
            f"{unexpected[:10]}{' ...' if len(unexpected) > 10 else ''} ({len(unexpected)}). It is probably a partial "
            "save or the adapter of another model: save the adapter again."
        )
    return peft_model


def load_processor(candidates: list[str]):
    """`SQLlavaProcessor` from the first folder of `candidates` that holds one (the adapter folder, then the base)."""
    from processing import SQLlavaProcessor

    for path in candidates:
        if not Path(path).is_dir() or any(Path(path, name).is_file() for name in _PROCESSOR_MARKERS):
            return SQLlavaProcessor.from_pretrained(path, trust_remote_code=False)
    raise ValueError(f"No processor/tokenizer files in any of {candidates}; save the processor next to the model.")


def count_lora_layers(model) -> dict[str, int]:
    """Number of LoRA-wrapped layers per tower (`vision_tower`, `language_model`, `other`)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    counts = {"vision_tower": 0, "language_model": 0, "other": 0}
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            tower = next((t for t in ("vision_tower", "language_model") if f".{t}." in f".{name}."), "other")
            counts[tower] += 1
    return counts


# --------------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------------


def code_files() -> list[Path]:
    """The shipped code files: the entry files and, recursively, every file they import relatively."""
    from transformers.dynamic_module_utils import get_relative_import_files

    files: dict[str, Path] = {}
    for entry in CODE_ENTRY_FILES:
        for path in [entry, *map(Path, get_relative_import_files(str(entry)))]:
            previous = files.setdefault(path.name, path)
            if previous.resolve() != path.resolve():
                raise ValueError(f"Two shipped code files share the name {path.name}: {previous} and {path}.")
    return list(files.values())


def write_export_folder(
    model,
    processor,
    output_dir: str | os.PathLike,
    *,
    dtype: str = "bfloat16",
    max_shard_size: str = "5GB",
    model_card=None,
) -> list[str]:
    """Write `model` (cast to `dtype`) and `processor` as a Hub-ready folder; returns the relative file paths.

    Shared by `export_model` and `hub_upload.convert_original`. The folder gets sharded safetensors, the flat code
    files, complete `auto_map`s in `config.json` and `processor_config.json`, `generation_config.json` and, when
    given, `model_card` (a `huggingface_hub.ModelCard`) as `README.md`. Pickle files are refused.

    Args:
        model (`SQLlavaForConditionalGeneration`): the merged model (any dtype; cast in place to `dtype`).
        processor (`SQLlavaProcessor`): its processor.
        output_dir (`str` or `os.PathLike`): destination folder.
        dtype (`str`, *optional*, defaults to `"bfloat16"`): weight dtype of the export.
        max_shard_size (`str`, *optional*, defaults to `"5GB"`): safetensors shard size.
        model_card (`huggingface_hub.ModelCard`, *optional*): written as `README.md`.
    """
    torch_dtype = _check_dtype(dtype)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    stale = _pickle_files(output)
    if stale:
        raise ValueError(f"output_dir={str(output)!r} already holds pickle files {stale}; use an empty folder.")
    _refuse_foreign_code(output, "already holds")

    model.to(torch_dtype)
    _align_generation_config(model, processor.tokenizer)
    model.save_pretrained(output, max_shard_size=max_shard_size, safe_serialization=True)
    processor.save_pretrained(output)
    for path in code_files():
        shutil.copyfile(path, output / path.name)
    _complete_auto_map(output / "config.json", MODEL_AUTO_MAP)
    _complete_auto_map(output / "processor_config.json", PROCESSOR_AUTO_MAP, create=True)
    if not (output / "generation_config.json").is_file():
        model.generation_config.save_pretrained(output)
    if model_card is not None:
        model_card.save(str(output / "README.md"))

    pickles = _pickle_files(output)
    if pickles:
        raise RuntimeError(f"The export wrote pickle files {pickles}; it must be safetensors-only.")
    if not list(output.glob("*.safetensors")):
        raise RuntimeError(f"No safetensors weights in {output} after save_pretrained.")
    return sorted(p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file())


def _pickle_files(folder: Path) -> list[str]:
    """Files of `folder` that are pickles by their content (`hub_upload.safety`), whatever their names."""
    from hub_upload.safety import find_pickles

    return [f"{path} ({reason})" for path, reason in find_pickles(folder)]


def _refuse_foreign_code(folder: Path, verb: str) -> None:
    """Refuse a folder whose code files (or `auto_map` targets) are not byte for byte this installation's."""
    from recipes.loading import foreign_code_files

    foreign = foreign_code_files(folder)
    if foreign:
        listing = "; ".join(f"{name}: {why}" for name, why in sorted(foreign.items()))
        raise ValueError(
            f"output_dir={str(folder)!r} {verb} code the export did not write ({listing}). Loading or publishing the "
            "folder would run it: export into an empty folder."
        )


def _complete_auto_map(path: Path, auto_map: dict[str, str], *, create: bool = False) -> None:
    """Add the missing `auto_map` entries to a saved JSON file; differing existing entries are an error."""
    if path.is_file():
        payload = json.loads(path.read_text())
    elif create:
        payload = {}
    else:
        raise RuntimeError(f"{path} was not written by save_pretrained.")
    current = dict(payload.get("auto_map") or {})
    for key, value in auto_map.items():
        existing = current.get(key)
        # A 4.x save may write `["module.Class", null]` style entries for tokenizers; plain strings elsewhere.
        if existing is not None and existing != value and not str(existing).endswith(value):
            raise RuntimeError(f"{path.name} maps {key} to {existing!r}, expected {value!r}.")
        current[key] = value
    payload["auto_map"] = current
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _align_generation_config(model, tokenizer) -> None:
    """bos/eos/pad ids of the generation config from the tokenizer (a stale pad id breaks batched generation)."""
    generation_config = model.generation_config
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None and getattr(generation_config, name, None) is None:
            setattr(generation_config, name, value)
    if getattr(tokenizer, "pad_token_id", None) is not None:
        generation_config.pad_token_id = tokenizer.pad_token_id


# --------------------------------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------------------------------


_SECRET_KEY = re.compile(r"(token|secret|password|api_key)$", re.IGNORECASE)
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def build_model_card(
    config,
    *,
    repo_id: str,
    base_model: str,
    base_model_id_for_card: str | list[str] | None = None,
    training_config: Mapping[str, Any] | None = None,
    train_metrics: Mapping[str, Any] | None = None,
    eval_results: Mapping[str, Any] | None = None,
    datasets: str | list[str] | None = None,
    license: str = "llama2",
    merged_lora: Mapping[str, int] | None = None,
    description: str | None = None,
):
    """The `README.md` of the export, through `hub_upload.model_card.render_model_card`."""
    from hub_upload.model_card import render_model_card

    card_base = base_model_id_for_card or _card_base_models(base_model, config)
    if isinstance(datasets, str):
        datasets = [datasets]
    if datasets is None and training_config:
        names = training_config.get("dataset_name")
        datasets = [names] if isinstance(names, str) else (list(names) if names else None)
    figures = _figures(train_metrics) if train_metrics else None
    architecture = {
        "projector_type": config.projector_type,
        "num_prototypes": config.num_prototypes,
        "prototype_iterations": config.prototype_iterations,
        "vision_feature_layer": config.vision_feature_layer,
        "image_seq_length": config.image_seq_length,
    }
    if merged_lora:
        architecture.update({f"merged_lora_layers.{k}": v for k, v in merged_lora.items() if v})
    config_for_card = None
    if training_config:
        config_for_card = {"architecture": architecture, "training": _card_safe(training_config)}
    return render_model_card(
        repo_id=repo_id,
        base_model=card_base,
        datasets=datasets,
        license=license,
        training_config=config_for_card,
        metrics=eval_results,
        figures=figures,
        description=description,
    )


def _card_base_models(base_model: str, config=None) -> list[str] | None:
    """Hub ids the weights really come from, for the card's `base_model` metadata; `None` when none is known.

    The towers' recorded sources come first: `from_pretrained` sets each sub-config's `_name_or_path` to what it
    loaded, and stage 1 keeps them through every later save. Then `base_model` itself when it is a Hub id. The
    training configuration is not used: in stage 2 its tower fields (`text_model_name_or_path`, ...) are unused
    defaults (`lmsys/vicuna-7b-v1.5`), and a card must not claim a model the weights do not come from.
    """

    def hub_ids(values) -> list[str]:
        return [v for v in values if isinstance(v, str) and _HUB_ID.match(v) and not Path(v).exists()]

    names = []
    if config is not None:
        names = hub_ids(getattr(sub, "_name_or_path", None) for sub in (config.text_config, config.vision_config))
    names = names or hub_ids([base_model])
    if names:
        return list(dict.fromkeys(names))
    logger.warning(
        "The weights come from local folders (base_model=%r, towers %s): the card gets no base_model metadata; pass "
        "base_model_id_for_card (--base-model-id-for-card) with the Hub ids they derive from.",
        base_model,
        [getattr(sub, "_name_or_path", None) for sub in (config.text_config, config.vision_config)] if config else [],
    )
    return None


def _card_safe(config: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-friendly copy of a training config with secret-looking values redacted."""
    safe: dict[str, Any] = {}
    for key, value in config.items():
        if _SECRET_KEY.search(str(key)) and value not in (None, False, True):
            safe[key] = "<redacted>"
        elif isinstance(value, Mapping):
            safe[key] = _card_safe(value)
        elif isinstance(value, (str, int, float, bool)) or value is None:
            safe[key] = value
        elif isinstance(value, (list, tuple)):
            safe[key] = [v if isinstance(v, (str, int, float, bool)) else str(v) for v in value]
        else:
            safe[key] = getattr(value, "value", str(value))  # enums (IntervalStrategy, ...) and other objects
    return safe


def _figures(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Card figures from `Trainer.train()` metrics (`train_runtime` in seconds, ...) or measured figures as given."""
    figures: dict[str, Any] = {}
    for key, value in metrics.items():
        if key == "train_runtime" and isinstance(value, (int, float)):
            figures["training_time_hours"] = round(value / 3600.0, 3)
        elif key == "train_samples_per_second":
            figures["samples_per_second"] = value
        elif key == "train_loss":
            figures["final_train_loss"] = value
        else:
            figures[key] = value
    return figures


# --------------------------------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------------------------------


def fixed_verification_inputs(config) -> dict[str, torch.Tensor]:
    """A fixed input: BOS, text, one full block of image tokens, text; and a fixed pixel tensor (seeded).

    Text ids avoid the special ids (< 3), the image token and the pad token, so the input is the same for every
    model with the same vocabulary.
    """
    generator = torch.Generator().manual_seed(_VERIFY_SEED)
    vocab_size = config.text_config.vocab_size
    excluded = {config.image_token_id, getattr(config, "pad_token_id", None)}
    allowed = torch.tensor([i for i in range(3, min(vocab_size, 32000)) if i not in excluded])
    before, after = (allowed[torch.randint(len(allowed), (n,), generator=generator)] for n in _VERIFY_TEXT_TOKENS)
    image = torch.full((config.image_seq_length,), config.image_token_id)
    bos = getattr(config.text_config, "bos_token_id", None)
    input_ids = torch.cat([torch.tensor([1 if bos is None else bos]), before, image, after]).unsqueeze(0)
    vision = config.vision_config
    pixel_values = torch.randn(
        (1, vision.num_channels, vision.image_size, vision.image_size), generator=generator, dtype=torch.float32
    )
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pixel_values}


@torch.no_grad()
def compute_logits(model, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Logits of `model` on `inputs` as float32 on the CPU (pixel values cast to the model's dtype)."""
    parameter = next(model.parameters())
    batch = {k: v.to(parameter.device) for k, v in inputs.items()}
    batch["pixel_values"] = batch["pixel_values"].to(parameter.dtype)
    return model(**batch).logits.float().cpu()


class PrototypeAssignments(TorchFunctionMode):
    """Record, or pin, the hard prototype assignment of every `SQLlavaPrototypeExtractor` call in a forward.

    The extractor keeps, for each patch, only its most similar prototype (`similarity.argmax(dim=1)`). Inside this
    context, every such argmax is recorded (`assignments`, with the similarities it was taken over in
    `similarities`); with `pinned`, the model then continues with the pinned assignment instead of its own. The model
    code is untouched (a torch function mode sees the call); the extractor is found by class name, so this works on
    the package's class and on the copy loaded as remote code alike. If the extractor ever stops making exactly one
    argmax call per forward, this raises instead of silently pinning nothing.

    This class is also run verbatim in the verification's fresh process (it imports only torch).

    Args:
        model (`torch.nn.Module`): the model whose extractors to watch.
        pinned (`list[torch.Tensor]`, *optional*): one `(B, L)` assignment per extractor call, in call order.

    Example:

    >>> with PrototypeAssignments(model) as record:  # doctest: +SKIP
    ...     reference = model(**inputs).logits
    >>> with PrototypeAssignments(half_model, pinned=record.assignments):  # doctest: +SKIP
    ...     pinned = half_model(**inputs).logits
    """

    def __init__(self, model, pinned=None):
        super().__init__()
        self.extractors = [m for m in model.modules() if type(m).__name__ == "SQLlavaPrototypeExtractor"]
        self.pinned = None if pinned is None else list(pinned)
        self.assignments, self.similarities = [], []
        self._depth, self._calls, self._handles = 0, 0, []

    def __enter__(self):
        for module in self.extractors:
            self._handles.append(module.register_forward_pre_hook(self._enter_extractor))
            self._handles.append(module.register_forward_hook(self._leave_extractor))
        return super().__enter__()

    def __exit__(self, *exc_info):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return super().__exit__(*exc_info)

    def _enter_extractor(self, module, args):
        self._depth, self._calls = self._depth + 1, 0

    def _leave_extractor(self, module, args, output):
        self._depth -= 1
        if self._calls != 1:
            raise RuntimeError(
                f"SQLlavaPrototypeExtractor made {self._calls} argmax calls in one forward, not 1: "
                "PrototypeAssignments no longer matches the model code and cannot pin its assignments."
            )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if self._depth and func in (torch.Tensor.argmax, torch.argmax):
            self._calls += 1
            index = len(self.assignments)
            self.assignments.append(result.detach().cpu().clone())
            self.similarities.append(args[0].detach().float().cpu().clone())
            if self.pinned is not None:
                if index >= len(self.pinned) or tuple(self.pinned[index].shape) != tuple(result.shape):
                    raise RuntimeError(
                        f"Pinned prototype assignment {index} does not fit: pinned "
                        f"{[tuple(a.shape) for a in self.pinned]}, this call {tuple(result.shape)}."
                    )
                return self.pinned[index].to(result.device)
        return result


@dataclass
class VerificationReference:
    """What the exported folder must reproduce: the unmerged float32 model's logits on the fixed input, and the
    prototype assignments (with their similarities) of each extractor call of that forward."""

    logits: torch.Tensor
    assignments: list[torch.Tensor] = field(default_factory=list)
    similarities: list[torch.Tensor] = field(default_factory=list)


def compute_reference(model, inputs: Mapping[str, torch.Tensor]) -> VerificationReference:
    """The `VerificationReference` of `model` (the unmerged float32 model) on `inputs`."""
    with PrototypeAssignments(model) as record:
        logits = compute_logits(model, inputs)
    return VerificationReference(logits, record.assignments, record.similarities)


def prototype_flips(
    assignments: list[torch.Tensor], reference: VerificationReference
) -> tuple[float | None, float | None]:
    """`(fraction of patches assigned another prototype than in the reference, largest reference similarity gap
    between the two prototypes of a flipped patch)`; `(None, None)` for a model without a prototype extractor."""
    if not reference.assignments:
        return None, None
    flipped, total, margin = 0, 0, 0.0
    for got, expected, similarity in zip(assignments, reference.assignments, reference.similarities):
        changed = got != expected
        flipped, total = flipped + int(changed.sum()), total + changed.numel()
        if changed.any():
            # (B, L): the reference's similarity to the prototype it kept and to the one the export picked.
            kept = similarity.gather(1, expected.unsqueeze(1)).squeeze(1)
            picked = similarity.gather(1, got.unsqueeze(1)).squeeze(1)
            margin = max(margin, float((kept - picked).abs()[changed].max()))
    return flipped / max(total, 1), margin


_VERIFY_SCRIPT = r"""
import json, sys
import torch
from torch.overrides import TorchFunctionMode
from safetensors.torch import load_file, save_file
import transformers
from transformers import AutoProcessor

folder, inputs_path, reference_path, output_path, dtype, device = sys.argv[1:7]
try:
    from transformers import AutoModelForImageTextToText as auto_class
except ImportError:
    from transformers import AutoModelForVision2Seq as auto_class
# Loaded in float32: the stored (export-dtype) values are upcast exactly, so the first comparison measures what the
# export changed (merge + rounding of the weights), independent of the runtime's half-precision kernels.
model, info = auto_class.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32, output_loading_info=True)
problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
if problems:
    sys.exit(f"loading the export left weights out: {problems}")
module = type(model).__module__
if not module.startswith("transformers_modules"):
    sys.exit(f"the model class came from {module}, not from the folder's remote code")
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
if not type(processor).__module__.startswith("transformers_modules"):
    sys.exit(f"the processor class came from {type(processor).__module__}, not from the folder's remote code")
model = model.to(device).eval()
inputs = {k: v.to(device) for k, v in load_file(inputs_path).items()}
stored = load_file(reference_path)
pinned = [stored[f"assignment.{i}"] for i in range(sum(k.startswith("assignment.") for k in stored))]
outputs = {}


def run(name, batch):
    # Pinned to the reference's prototype assignments: the merge check; unpinned: what the model picks itself.
    with PrototypeAssignments(model, pinned=pinned if pinned else None):
        outputs[name] = model(**batch).logits.float().cpu().contiguous()
    with PrototypeAssignments(model) as record:
        outputs[name + ".unpinned"] = model(**batch).logits.float().cpu().contiguous()
    for i, assignment in enumerate(record.assignments):
        outputs[f"{name}.assignment.{i}"] = assignment.contiguous()


with torch.no_grad():
    run("float32", inputs)
    if dtype != "float32":
        # Casting back to the export dtype is exact; this forward is what a user running the model in it gets.
        model = model.to(getattr(torch, dtype))
        run("native", dict(inputs, pixel_values=inputs["pixel_values"].to(model.dtype)))
save_file(outputs, output_path)
print(json.dumps({"model_class": type(model).__name__, "processor_class": type(processor).__name__,
                  "transformers": transformers.__version__}))
"""


def _verify_script() -> str:
    # The fresh process cannot import this repository: the pinning class travels as source.
    header, body = _VERIFY_SCRIPT.split("folder, inputs_path", 1)
    return header + "\n" + inspect.getsource(PrototypeAssignments) + "\n\nfolder, inputs_path" + body


def verify_export_folder(
    output_dir: str | os.PathLike,
    inputs: Mapping[str, torch.Tensor],
    reference: VerificationReference,
    *,
    dtype: str,
    tolerance: float | None = None,
    native_tolerance: float | None = None,
    device: str = "cpu",
    python_executable: str | None = None,
    timeout: float = 3600.0,
) -> dict[str, Any]:
    """Reload `output_dir` in a fresh process with `trust_remote_code=True` and compare logits with the reference.

    The folder's code must first be this installation's (else `ValueError`, and nothing runs). The fresh process
    loads the folder in float32 (exact upcast of the stored weights) and, for a half-precision export, runs a second
    forward in that dtype; each forward runs pinned to the reference's prototype assignments (judged) and unpinned
    (reported). Errors are `max |logits - reference| / max |reference|`.

    Args:
        output_dir: the exported folder.
        inputs: `input_ids`, `attention_mask`, `pixel_values` (see `fixed_verification_inputs`).
        reference: `compute_reference(source_model, inputs)`: logits and prototype assignments of the source model
            (float32, unmerged).
        dtype: the export dtype: selects the default tolerances.
        tolerance: bound for the float32 reload (default `VERIFY_TOLERANCES[dtype]`).
        native_tolerance: bound for the forward in `dtype` (default `NATIVE_TOLERANCES[dtype]`).
        device: device of the reloaded model.
        python_executable: interpreter of the fresh process (default: this one), e.g. a transformers 4.x venv.
        timeout: seconds before the fresh process is killed.

    Returns:
        `dict` with `verified`, `max_relative_error` and `max_absolute_error` (float32 reload, assignments pinned),
        `tolerance`, `unpinned_relative_error`, `prototype_flip_fraction`, `prototype_flip_max_margin`,
        `native_relative_error`, `native_unpinned_relative_error`, `native_prototype_flip_fraction`,
        `native_tolerance` (the `native_*` entries `None` for float32) and `loaded_with`.

    Raises:
        TypeError: `reference` is not a `VerificationReference`.
        ValueError: the folder holds code files this installation does not ship.
        ExportVerificationError: if the fresh process fails to load the folder or an error exceeds its tolerance.
    """
    from safetensors.torch import load_file, save_file

    _check_dtype(dtype)
    if not isinstance(reference, VerificationReference):
        raise TypeError(
            f"reference must be a VerificationReference, got {type(reference).__name__}; build it with "
            "compute_reference(source_model, inputs) (logits and prototype assignments)."
        )
    tolerance = VERIFY_TOLERANCES[dtype] if tolerance is None else tolerance
    native_tolerance = NATIVE_TOLERANCES.get(dtype) if native_tolerance is None else native_tolerance
    folder = Path(output_dir).resolve()
    _refuse_foreign_code(folder, "holds")
    with tempfile.TemporaryDirectory(prefix="sqllava-verify-") as tmp:
        inputs_path, output_path = Path(tmp, "inputs.safetensors"), Path(tmp, "logits.safetensors")
        reference_path = Path(tmp, "reference.safetensors")
        save_file({k: v.contiguous() for k, v in inputs.items()}, str(inputs_path))
        stored = {f"assignment.{i}": a.contiguous() for i, a in enumerate(reference.assignments)}
        save_file(stored or {"none": torch.zeros(0)}, str(reference_path))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
        # A private module cache: remote code is imported from this folder's files, never from a stale copy.
        env.update(HF_MODULES_CACHE=str(Path(tmp, "modules")), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
        # `-I`: neither the working directory nor PYTHON* variables reach sys.path, so this repo is not importable.
        command = [python_executable or sys.executable, "-I", "-c", _verify_script()]
        command += [str(folder), str(inputs_path), str(reference_path), str(output_path), dtype, device]
        result = subprocess.run(
            command, check=False, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise ExportVerificationError(
                f"Reloading {folder} with trust_remote_code=True in a fresh process failed (exit {result.returncode}):"
                f"\n{result.stderr[-4000:]}{result.stdout[-2000:]}"
            )
        loaded_with = json.loads(result.stdout.strip().splitlines()[-1])
        logits = load_file(str(output_path))

    def assignments(name: str) -> list[torch.Tensor]:
        return [logits[f"{name}.assignment.{i}"] for i in range(len(reference.assignments))]

    max_rel, max_abs = relative_logit_error(logits["float32"], reference.logits)
    flip_fraction, flip_margin = prototype_flips(assignments("float32"), reference)
    report = {
        "verified": True,
        "max_relative_error": max_rel,
        "max_absolute_error": max_abs,
        "tolerance": tolerance,
        "unpinned_relative_error": relative_logit_error(logits["float32.unpinned"], reference.logits)[0],
        "prototype_flip_fraction": flip_fraction,
        "prototype_flip_max_margin": flip_margin,
        "native_relative_error": None,
        "native_unpinned_relative_error": None,
        "native_prototype_flip_fraction": None,
        "native_tolerance": None,
        "loaded_with": loaded_with,
    }
    flips = "" if flip_fraction is None else f" ({flip_fraction:.1%} of patches flip to another prototype unpinned)"
    if not math.isfinite(max_rel) or max_rel > tolerance:
        raise ExportVerificationError(
            f"The export in {folder} does not reproduce the source model: max relative logit error {max_rel:.3e} > "
            f"tolerance {tolerance:.1e} for {dtype} weights (max absolute error {max_abs:.3e}), with the prototype "
            f"assignments pinned to the source model's, so this is not a near-tie flip{flips}: the merged weights "
            "are wrong. Do not publish it."
        )
    if "native" in logits:
        native_rel, _ = relative_logit_error(logits["native"], reference.logits)
        report.update(
            native_relative_error=native_rel,
            native_unpinned_relative_error=relative_logit_error(logits["native.unpinned"], reference.logits)[0],
            native_prototype_flip_fraction=prototype_flips(assignments("native"), reference)[0],
            native_tolerance=native_tolerance,
        )
        if not math.isfinite(native_rel) or native_rel > native_tolerance:
            raise ExportVerificationError(
                f"The export in {folder} run in {dtype} deviates from the float32 source model by {native_rel:.3e} "
                f"(relative logit error, prototype assignments pinned) > {native_tolerance:.1e}: check the model's "
                "half-precision code path. Do not publish it."
            )
    native = (
        "" if report["native_relative_error"] is None else f"; run in {dtype}: {report['native_relative_error']:.2e}"
    )
    logger.info(
        "Verified %s (%s weights): max relative logit error %.2e <= %.0e with prototype assignments pinned%s%s.",
        folder,
        dtype,
        max_rel,
        tolerance,
        native,
        "" if flip_fraction is None else f"; unpinned, {flip_fraction:.1%} of patches flip (near ties, reported only)",
    )
    return report


def relative_logit_error(logits: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """`(max |logits - reference| / max |reference|, max |logits - reference|)`, computed in float64."""
    if logits.shape != reference.shape:
        raise ExportVerificationError(
            f"Reloaded logits have shape {tuple(logits.shape)}, the source model's {tuple(reference.shape)}."
        )
    reference = reference.double()
    max_abs = (logits.double() - reference).abs().max().item()
    scale = reference.abs().max().item()
    return (max_abs / scale if scale > 0 else max_abs), max_abs


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


def _load_json_arg(value: str | None) -> dict | None:
    if value is None:
        return None
    path = Path(value)
    text = path.read_text() if path.is_file() else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{value!r} is neither a JSON file nor a JSON object: {error}") from error


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--base-model", required=True, help="Stage-1 folder (with --adapter) or full checkpoint.")
    parser.add_argument("--adapter", default=None, help="PEFT adapter folder written by recipes/finetune.py.")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(EXPORT_DTYPES))
    parser.add_argument("--max-shard-size", default="5GB")
    parser.add_argument("--repo-id", default=None, help="Hub repo named in the model card.")
    parser.add_argument("--base-model-id-for-card", nargs="+", default=None, help="Hub id(s) for card metadata.")
    parser.add_argument("--datasets", nargs="+", default=None, help="Hub ids of the training datasets (card).")
    parser.add_argument("--license", default="llama2")
    parser.add_argument("--training-config", default=None, help="JSON file/object: the training config used.")
    parser.add_argument("--train-metrics", default=None, help="JSON file/object: measured training figures.")
    parser.add_argument("--eval-results", default=None, help="JSON file/object: evaluation results.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-verify", action="store_true", help="Skip the fresh-process logits check.")
    args = parser.parse_args(argv)
    card_ids = args.base_model_id_for_card
    report = export_model(
        base_model=args.base_model,
        adapter=args.adapter,
        output_dir=args.output_dir,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        repo_id=args.repo_id,
        training_config=_load_json_arg(args.training_config),
        train_metrics=_load_json_arg(args.train_metrics),
        eval_results=_load_json_arg(args.eval_results),
        verify=not args.no_verify,
        base_model_id_for_card=card_ids[0] if card_ids and len(card_ids) == 1 else card_ids,
        datasets=args.datasets,
        license=args.license,
        device=args.device,
    )
    print(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
