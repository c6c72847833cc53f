"""Convert the authors' released SQ-LLaVA checkpoints into a Hub-native SQ-LLaVA folder.

```bash
python -m hub_upload.convert_original \
    --model-base Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12_vicuna-7b-v1.5 \
    --model-path ZachSun/sqllava-lora-7b --vit-lora ZachSun/sqllava-lora-7b/Vit-lora \
    --output-dir outputs/sqllava-7b-hf [--dtype bfloat16] [--push-to-hub your-name/sqllava-7b-hf]
```

The released model is four pieces, each with its own key layout:

- `--model-base`: a LLaVA-format Llama (`model.*`, `lm_head.*`; a `model.mm_projector.*` of its own and possibly
  `model.vision_tower.*`, both ignored as by the original loader, which rebuilds the tower from `mm_vision_tower`);
- `--model-path`: `config.json` (LLaVA style: `mm_projector_type: "cluster"`, `mm_vision_select_layer: -2`,
  `image_aspect_ratio: "pad"`), the LLM LoRA (`adapter_config.json` + `adapter_model.{bin,safetensors}`, keys
  `base_model.model.model.layers.N....lora_A.weight`) and `non_lora_trainables.{bin,safetensors}` (the projector,
  `base_model.model.model.mm_projector.{sim_alpha, sim_beta, c, v, f, ln_1, mlp.0, mlp.2}`);
- `--vit-lora` (default `<model-path>/Vit-lora`): a PEFT adapter over the CLIP tower
  (`base_model.model.vision_tower.vision_model.encoder.layers.N....lora_A.weight`);
- `--vision-tower` (default: `mm_vision_tower` of the config): the CLIP checkpoint, with transformers 4.x keys
  (`vision_model.*`, possibly a full `CLIPModel` with its text tower) or 5.x keys (no `vision_model.` level). The
  authors fine-tune on ShareGPT4V's CLIP (`Lin-Chen/ShareGPT4V-{7B,13B}_Pretrained_vit-large336-l12`, their
  `scripts/finetune_lora_clu_sq.sh` and `docs/MODEL_ZOO.md`), whose weights differ from OpenAI's CLIP of the same
  shape, and their loader always loads the config's `mm_vision_tower` (`sqllava/model/builder.py`,
  `multimodal_encoder/clip_encoder.py`). So a tower of another name (last path component) is refused unless
  `--allow-other-vision-tower` is given; a local copy of the same Hub repo keeps its folder name and is accepted.

Every released key is either mapped by the tables below or dropped for a reason listed there; any other key fails
the conversion with its name, and so does any weight of the SQ-LLaVA model that no released key provides. Each LoRA
is merged with its own scaling (`lora_alpha / r`, `rank_pattern`/`alpha_pattern` honoured, `lora_alpha / sqrt(r)`
with `use_rslora`), in float32. `<image>` and `<pad>` are added to the tokenizer (Vicuna has neither: the original
code used the placeholder id -200) and the embeddings are padded to a multiple of 64; the new rows are the mean of
the existing ones (LLaVA's own convention), so a new token's logit is the vocabulary's mean logit and is never the
greedy choice. These 64 extra rows (32000 -> 32064 for Vicuna) lower every per-token log-probability by at most
log(1 + 64/32000) ~ 0.002 nats against the released model (a new logit is the mean one, and exp(mean) <= mean(exp));
greedy decoding is unaffected, and only log-likelihood scoring sees the difference. The model is built on the meta
device and loaded with `strict=True`.

The default export dtype is bfloat16, the dtype the released weights were trained in (`--bf16 True` in the authors'
training scripts; their evaluation scripts cast to float16, which `--dtype float16` gives). Merging and the
reference forward run in float32: peak RAM is about the half-precision checkpoint plus one float32 copy of the model
(~42 GB for 7B, ~78 GB for 13B); the verification process then loads the export in float32 on its own. The
verification pins the prototype assignments to the float32 model's, so that near-tied patches whose hard assignment
flips under half-precision rounding are reported (`prototype_flip_fraction`) instead of failing a correct
conversion; see `hub_upload.export`.

Nothing from the released folders runs: weights are read as safetensors or with `torch.load(weights_only=True)`, the
tokenizer with `trust_remote_code=False`, and the Hub download fetches no Python file. A damaged input fails with the
file (and key) named: a truncated weights file, a shard index without `weight_map`, a config value of the wrong type,
a tensor the model needs that no released file provides.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------------
# Key-rename tables. Each entry: (regex on the released key, replacement). First match wins. Dropped keys carry the
# reason they are not needed; anything matched by neither table is an error.
# --------------------------------------------------------------------------------------------------------------------

# LLaVA-format Llama (`--model-base`) -> SQLlavaForConditionalGeneration.
LLM_KEY_RENAMES: list[tuple[str, str]] = [
    (r"^model\.embed_tokens\.", "model.language_model.embed_tokens."),
    (r"^model\.layers\.(\d+)\.", r"model.language_model.layers.\1."),
    (r"^model\.norm\.", "model.language_model.norm."),
    (r"^lm_head\.", "lm_head."),
]
LLM_DROPPED_KEYS: dict[str, str] = {
    r"\.rotary_emb\.inv_freq$": "rotary frequencies are recomputed from the config (old Llama checkpoints saved them)",
    r"^model\.mm_projector\.": "the base checkpoint's own projector; SQ-LLaVA's comes from non_lora_trainables",
    r"^model\.vision_tower\.": "the original loader ignores the base's vision weights and loads mm_vision_tower",
}
# The LLM adapter (`--model-path`) also holds a copy of the ViT-LoRA, under `model.vision_tower.vision_tower.`: the
# authors' train.py saves every `lora_` parameter of the model, the CLIP tower's included (train.py:1239-1249), and
# their loader merges this adapter before the CLIP tower is built (builder.py:78-81 vs 140-147), so the copy is never
# applied. Vit-lora/ is what they merge into the tower; `convert_state_dicts` checks the two agree.
LLM_LORA_DROPPED_KEYS: dict[str, str] = {
    **{pattern: reason for pattern, reason in LLM_DROPPED_KEYS.items() if pattern != r"^model\.vision_tower\."},
    r"^model\.vision_tower\.": "the ViT-LoRA's copy in the LLM adapter (train.py saves every lora_ parameter); the "
    "authors' loader merges the LLM adapter before CLIP exists, so only Vit-lora/ reaches the tower",
}
# Where that copy sits in the LLM adapter; below it the keys are those of the ViT-LoRA below its own prefix.
LLM_LORA_VIT_COPY_PREFIX = "base_model.model.model.vision_tower.vision_tower."

# CLIP vision checkpoint (`--vision-tower`; 4.x `vision_model.*` or 5.x keys) -> the truncated vision tower. Layers
# at or after `num_vision_layers` are dropped separately (never run with vision_feature_layer=-2).
VISION_KEY_RENAMES: list[tuple[str, str]] = [
    (r"^(?:vision_model\.)?embeddings\.(class_embedding|patch_embedding\.|position_embedding\.)",
     r"model.vision_tower.embeddings.\1"),
    (r"^(?:vision_model\.)?pre_layrnorm\.", "model.vision_tower.pre_layrnorm."),
    (r"^(?:vision_model\.)?encoder\.layers\.(\d+)\.", r"model.vision_tower.encoder.layers.\1."),
]  # fmt: skip
VISION_DROPPED_KEYS: dict[str, str] = {
    r"^(?:vision_model\.)?embeddings\.position_ids$": "a constant buffer, rebuilt by the model",
    r"^(?:vision_model\.)?post_layernorm\.": "applied only to the pooled CLS output, which LLaVA never uses",
    r"^text_model\.": "the text tower of a full CLIPModel checkpoint",
    r"^(visual_projection|text_projection)\.": "CLIP's contrastive projections, unused by LLaVA",
    r"^logit_scale$": "CLIP's contrastive temperature, unused by LLaVA",
}

# Released projector (`non_lora_trainables`, prefix stripped) -> SQLlavaMultiModalProjector.
PROJECTOR_KEY_PREFIXES = ("base_model.model.model.mm_projector.", "model.mm_projector.", "mm_projector.")
PROJECTOR_KEY_RENAMES: list[tuple[str, str]] = [
    (r"^sim_alpha$", "extractor.sim_alpha"),
    (r"^sim_beta$", "extractor.sim_beta"),
    (r"^([cvf])\.(weight|bias)$", r"extractor.\1.\2"),
    (r"^mlp\.0\.(weight|bias)$", r"linear_1.\1"),
    (r"^mlp\.2\.(weight|bias)$", r"linear_2.\1"),
]
PROJECTOR_DROPPED_KEYS: dict[str, str] = {
    r"^ln_1\.(weight|bias)$": "a LayerNorm the original Clustering module builds but never calls in forward",
}
REQUIRED_PROJECTOR_KEYS = (
    "extractor.v.weight", "extractor.v.bias", "extractor.f.weight", "extractor.f.bias", "extractor.c.weight",
    "extractor.c.bias", "extractor.sim_alpha", "extractor.sim_beta", "linear_1.weight", "linear_1.bias",
    "linear_2.weight", "linear_2.bias",
)  # fmt: skip

# PEFT adapter keys: `<prefix><module>.lora_A[.<adapter name>].weight`. The prefix says which model PEFT wrapped.
LLM_LORA_PREFIXES = ("base_model.model.",)
# The ViT adapter wrapped the original `CLIPVisionTower` (whose `.vision_tower` is the CLIPVisionModel); accept an
# adapter over a bare CLIPVisionModel too.
VIT_LORA_PREFIXES = ("base_model.model.vision_tower.", "base_model.model.")
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")

# Llama fields taken from the LLaVA config.json into the text config.
LLAMA_CONFIG_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling", "attention_bias",
    "attention_dropout", "mlp_bias", "initializer_range", "pretraining_tp", "head_dim", "bos_token_id",
    "eos_token_id",
)  # fmt: skip
# The original builder hard-codes the extractor: `Clustering(mm_hidden_size, hidden_size, 256, 2)`.
ORIGINAL_NUM_PROTOTYPES = 256
ORIGINAL_PROTOTYPE_ITERATIONS = 2
VOCAB_MULTIPLE = 64


class ConversionError(ValueError):
    """The released checkpoint does not match the expected layout (unknown, missing or mis-shaped keys)."""


# --------------------------------------------------------------------------------------------------------------------
# Key mapping
# --------------------------------------------------------------------------------------------------------------------


def rename_key(key: str, renames: list[tuple[str, str]], dropped: Mapping[str, str]) -> tuple[str | None, str | None]:
    """`(new_key, None)` for a mapped key, `(None, reason)` for a dropped one, `(None, None)` for an unknown one."""
    for pattern, reason in dropped.items():
        if re.search(pattern, key):
            return None, reason
    for pattern, replacement in renames:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key, count=1), None
    return None, None


def _map_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    renames: list[tuple[str, str]],
    dropped: Mapping[str, str],
    source: str,
    *,
    dropped_log: dict[str, str],
    key_filter=None,
    where: str | None = None,
) -> dict[str, torch.Tensor]:
    name = f"{source} ({where})" if where else source  # errors name the file(s) the keys come from
    mapped: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        new_key, reason = rename_key(key, renames, dropped)
        if new_key is not None and key_filter is not None:
            new_key, reason = key_filter(new_key, key)
        if new_key is None and reason is None:
            unknown.append(key)
        elif new_key is None:
            dropped_log[f"{source}:{key}"] = reason
        else:
            if new_key in mapped:
                raise ConversionError(f"{name}: two keys map to {new_key!r} (the second is {key!r}).")
            mapped[new_key] = tensor
    if unknown:
        raise ConversionError(
            f"{name} has {len(unknown)} key(s) the converter does not know: {sorted(unknown)[:20]}"
            f"{' ...' if len(unknown) > 20 else ''}. Check that it is the released SQ-LLaVA layout; if these keys are "
            "legitimately unused, add them to the dropped-key table with the reason."
        )
    return mapped


def convert_projector_state_dict(
    original: Mapping[str, torch.Tensor], *, dropped_log: dict[str, str] | None = None, where: str | None = None
) -> dict[str, torch.Tensor]:
    r"""Map the released cluster-projector weights to a `SQLlavaMultiModalProjector` state dict.

    Accepts the keys of `non_lora_trainables.bin` with or without their `base_model.model.model.mm_projector.`
    (or `model.mm_projector.`) prefix. `sim_alpha`/`sim_beta` (shape `[1, 1, 1]`) become scalars; `ln_1.*` is dropped
    (built but never used by the original forward); `mlp.0`/`mlp.2` become `linear_1`/`linear_2`.

    Args:
        original (`dict[str, torch.Tensor]`): the released projector weights.
        dropped_log (`dict`, *optional*): receives `{key: reason}` for every dropped key.
        where (`str`, *optional*): the file the weights come from, named in the errors.

    Returns:
        `dict[str, torch.Tensor]`: loadable with `SQLlavaMultiModalProjector(config).load_state_dict(..., strict=True)`.

    Raises:
        ConversionError (a `ValueError`): naming unknown keys, missing keys or mis-shaped scalars.

    Example:

    ```python
    >>> state = torch.load("non_lora_trainables.bin", weights_only=True)  # doctest: +SKIP
    >>> projector.load_state_dict(convert_projector_state_dict(state), strict=True)  # doctest: +SKIP
    ```
    """
    stripped = {}
    for key, tensor in original.items():
        short = next((key[len(p) :] for p in PROJECTOR_KEY_PREFIXES if key.startswith(p)), key)
        if short in stripped:
            raise ConversionError(f"Projector key {short!r} appears twice (with different prefixes), e.g. {key!r}.")
        stripped[short] = tensor
    log: dict[str, str] = {} if dropped_log is None else dropped_log
    mapped = _map_state_dict(
        stripped, PROJECTOR_KEY_RENAMES, PROJECTOR_DROPPED_KEYS, "projector", dropped_log=log, where=where
    )
    missing = [key for key in REQUIRED_PROJECTOR_KEYS if key not in mapped]
    if missing:
        raise ConversionError(
            f"The projector weights{f' in {where}' if where else ''} miss {missing} (got {sorted(original)}); pass "
            "the released "
            "non_lora_trainables file of a `mm_projector_type: cluster` model."
        )
    for name in ("extractor.sim_alpha", "extractor.sim_beta"):
        if mapped[name].numel() != 1:
            raise ConversionError(
                f"{name} must hold one value (released shape [1, 1, 1]), got {tuple(mapped[name].shape)}."
            )
        mapped[name] = mapped[name].reshape(())
    return mapped


# --------------------------------------------------------------------------------------------------------------------
# Reading the released files
# --------------------------------------------------------------------------------------------------------------------


def weights_files(folder: str | os.PathLike, stems: tuple[str, ...]) -> list[Path]:
    """The weights files of `folder` saved as `<stem>.safetensors`, `<stem>.bin` or sharded with an index.

    Safetensors first. Shards named by an index must be files inside `folder`.

    Raises:
        ValueError: no weights, or an index that is unreadable, lacks `weight_map` or names a shard that is missing
            or outside the folder; the message names the file.
    """
    from hub_upload.files import read_json

    folder = Path(folder)
    for stem in stems:
        for suffix in (".safetensors", ".bin"):
            single, index = folder / f"{stem}{suffix}", folder / f"{stem}{suffix}.index.json"
            if single.is_file():
                return [single]
            if index.is_file():
                weight_map = read_json(index, what="a sharded-weights index").get("weight_map")
                if not isinstance(weight_map, dict) or not weight_map:
                    raise ValueError(f"{index}: no `weight_map` object (tensor name -> shard file); not an index.")
                shards = []
                for shard in sorted(set(map(str, weight_map.values()))):
                    path = (folder / shard).resolve()
                    if path.parent != folder.resolve() or not path.is_file():
                        raise ValueError(
                            f"{index}: `weight_map` names the shard {shard!r}, which is not a file in {folder}."
                        )
                    shards.append(folder / shard)
                return shards
    raise ValueError(
        f"No weights in {str(folder)!r}: expected one of "
        f"{[f'{s}{x}' for s in stems for x in ('.safetensors', '.bin', '.safetensors.index.json', '.bin.index.json')]}."
    )


def load_weights(folder: str | os.PathLike, stems: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """All weights of `folder` (see `weights_files`), merged into one state dict; each file read by
    `hub_upload.files.load_state_file` (pickles with `weights_only=True`: no code runs)."""
    from hub_upload.files import load_state_file

    state: dict[str, torch.Tensor] = {}
    for path in weights_files(folder, stems):
        state.update(load_state_file(path))
    return state


def _tower_name(path_or_repo: str) -> str:
    """The last path component of a Hub id or folder; for a Hub cache snapshot (`models--owner--name/snapshots/
    <revision>`) the repo's name, so that the cached copy of `mm_vision_tower` counts as that tower."""
    path = Path(path_or_repo.rstrip("/\\"))
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.split("--")[-1]
    return path.name


def resolve_folder(path_or_repo: str, name: str, allow_patterns: list[str] | None = None) -> Path:
    """A local folder, or a Hub repo (`owner/name[/subfolder]`) downloaded with `snapshot_download`."""
    if Path(path_or_repo).is_dir():
        return Path(path_or_repo)
    parts = path_or_repo.split("/")
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"{name}={path_or_repo!r} is neither a local folder nor a Hub repo id ('owner/name').")
    from huggingface_hub import snapshot_download

    repo_id, subfolder = "/".join(parts[:2]), "/".join(parts[2:])
    patterns = allow_patterns or ["*.json", "*.safetensors", "*.bin", "*.model", "*.txt"]
    if subfolder:
        patterns = [f"{subfolder}/{p}" for p in patterns]
    try:
        local = Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as error:  # network, auth, missing repo: say which argument and how to fix it
        raise ValueError(
            f"{name}={path_or_repo!r} is not a local folder and could not be downloaded from the Hub ({error}); "
            "download it first and pass the folder."
        ) from error
    return local / subfolder if subfolder else local


def read_adapter_config(folder: Path, name: str) -> dict[str, Any]:
    """The LoRA `adapter_config.json` of `folder`, with the settings the merge relies on checked (type and value)."""
    from hub_upload.files import LORA_ADAPTER_TYPES, check_types, read_json

    path = folder / "adapter_config.json"
    if not path.is_file():
        raise ValueError(f"{name}={str(folder)!r} has no adapter_config.json; pass the PEFT adapter folder.")
    config = read_json(path, what="the PEFT adapter_config.json")
    check_types(config, LORA_ADAPTER_TYPES, path)
    for flag in ("use_dora", "fan_in_fan_out"):
        if config.get(flag):
            raise ValueError(f"{path} sets {flag}=true, which this converter does not merge.")
    if config.get("bias", "none") != "none":
        raise ValueError(f"{path} has bias={config['bias']!r}; only bias='none' is supported.")
    if "r" not in config or "lora_alpha" not in config:
        raise ValueError(f"{path} lacks `r` or `lora_alpha`; it is not a LoRA adapter config.")
    for key in ("rank_pattern", "alpha_pattern"):
        for pattern, value in (config.get(key) or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{path}: `{key}.{pattern}` = {value!r} must be a number.")
    return config


def lora_scaling(adapter_config: Mapping[str, Any], module_name: str, rank: int) -> float:
    """PEFT's scaling for one module: `alpha / r` (or `alpha / sqrt(r)` with `use_rslora`), patterns honoured."""
    r, alpha = adapter_config["r"], adapter_config["lora_alpha"]
    # PEFT matches pattern keys against the end of the module name (`get_pattern_key`).
    for pattern, value in (adapter_config.get("rank_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module_name):
            r = value
            break
    for pattern, value in (adapter_config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module_name):
            alpha = value
            break
    if r != rank:
        raise ConversionError(
            f"LoRA of {module_name!r} has rank {rank} in its weights but r={r} in adapter_config.json."
        )
    return alpha / math.sqrt(r) if adapter_config.get("use_rslora") else alpha / r


def merge_lora(
    state_dict: dict[str, torch.Tensor],
    adapter_weights: Mapping[str, torch.Tensor],
    adapter_config: Mapping[str, Any],
    *,
    prefixes: tuple[str, ...],
    renames: list[tuple[str, str]],
    dropped: Mapping[str, str],
    source: str,
    dropped_log: dict[str, str],
    key_filter=None,
    where: str | None = None,
    identity_adapters: list[str] | None = None,
) -> int:
    """Merge `W += scaling * B @ A` (float32) into `state_dict` for every LoRA pair; returns the number merged.

    `where` (the adapter's file) is named in the errors. When every merged `lora_B` is zero the adapter is the
    identity (PEFT initialises B to zero, so an adapter that never received a gradient is one): a warning says so and
    `source` is appended to `identity_adapters`. The authors' ViT-LoRA is such an adapter if trained by their
    published code: `CLIPVisionTower.forward` runs under `@torch.no_grad()` (clip_encoder.py:46).
    """
    name = f"{source} ({where})" if where else source
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in adapter_weights.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        match = _LORA_KEY.match(key[len(prefix) :]) if prefix is not None else None
        if match is None:
            unknown.append(key)
            continue
        pairs.setdefault(match["module"], {})[match["part"]] = tensor
    if unknown:
        raise ConversionError(
            f"{name} has {len(unknown)} key(s) that are not LoRA A/B weights under {prefixes}: {sorted(unknown)[:20]}."
        )
    merged = 0
    all_zero = True
    for module, parts in sorted(pairs.items()):
        if set(parts) != {"A", "B"}:
            raise ConversionError(f"{name}: LoRA of {module!r} has only lora_{''.join(parts)}; both A and B needed.")
        target, reason = rename_key(f"{module}.weight", renames, dropped)
        if target is not None and key_filter is not None:
            target, reason = key_filter(target, f"{module}.weight")
        if target is None and reason is None:
            raise ConversionError(f"{name}: LoRA targets {module!r}, which is not a known weight of the tower.")
        if target is None:
            dropped_log[f"{source}:{module}.lora_A/B"] = reason
            continue
        if target not in state_dict:
            raise ConversionError(f"{name}: LoRA targets {target!r}, which the base checkpoints do not provide.")
        lora_a, lora_b = parts["A"].float(), parts["B"].float()
        weight = state_dict[target]
        if lora_a.shape[0] != lora_b.shape[1] or (lora_b.shape[0], lora_a.shape[1]) != tuple(weight.shape):
            raise ConversionError(
                f"{name}: LoRA of {module!r} has A {tuple(lora_a.shape)}, B {tuple(lora_b.shape)}, which do not fit "
                f"the weight {target!r} of shape {tuple(weight.shape)}."
            )
        # The module name PEFT matched patterns against (without the PeftModel wrapper prefix).
        scaling = lora_scaling(adapter_config, module, lora_a.shape[0])
        state_dict[target] = weight.float() + scaling * (lora_b @ lora_a)
        merged += 1
        all_zero = all_zero and not lora_b.any()
    if merged and all_zero:
        logger.warning(
            "%s: every lora_B of its %d merged LoRA layers is zero, so the adapter is the identity and merging it "
            "changes no weight (an adapter that was never trained; the authors' ViT-LoRA trained by their published "
            "code is one, since their CLIPVisionTower.forward runs under torch.no_grad()).",
            name,
            merged,
        )
        if identity_adapters is not None:
            identity_adapters.append(source)
    return merged


# --------------------------------------------------------------------------------------------------------------------
# Configs and tokenizer
# --------------------------------------------------------------------------------------------------------------------


def build_sqllava_config(
    llava_config: Mapping[str, Any],
    vision_config: Mapping[str, Any],
    *,
    vocab_size: int,
    image_token_id: int,
    pad_token_id: int,
    num_prototypes: int = ORIGINAL_NUM_PROTOTYPES,
    prototype_iterations: int = ORIGINAL_PROTOTYPE_ITERATIONS,
):
    """`SQLlavaConfig` from the released LLaVA `config.json` and the CLIP tower's config, checking the settings."""
    from transformers import CLIPVisionConfig, LlamaConfig

    from modeling_sqllava import SQLlavaConfig

    projector_type = llava_config.get("mm_projector_type")
    if projector_type != "cluster":
        raise ValueError(
            f"config.json has mm_projector_type={projector_type!r}; this converter handles SQ-LLaVA's 'cluster' "
            "projector only."
        )
    if llava_config.get("mm_use_im_start_end"):
        raise ValueError(
            "config.json sets mm_use_im_start_end=true (image start/end tokens), which SQ-LLaVA does not use."
        )
    # The authors' code treats a missing value as no padding (mm_utils.py:28-37 `process_images`; train.py:71 defaults
    # to 'square'), which the processor does not reproduce: no silent 'pad'.
    if "image_aspect_ratio" not in llava_config:
        raise ValueError(
            "config.json has no image_aspect_ratio; the authors' code then resizes and center-crops without padding "
            'to a square, which the SQ-LLaVA processor does not reproduce. Add "image_aspect_ratio": "pad" to '
            "config.json if the model was trained with padded images (the released models were: their scripts pass "
            "--image_aspect_ratio pad)."
        )
    # Their tower reads the key unconditionally (clip_encoder.py:14) and their training default is -1 (train.py:55),
    # not LLaVA-1.5's -2: no silent -2 either.
    if "mm_vision_select_layer" not in llava_config:
        raise ValueError(
            "config.json has no mm_vision_select_layer (the CLIP hidden state fed to the projector); the authors' "
            "tower requires it and their training default is -1, not LLaVA-1.5's -2. Add the layer the model was "
            'trained with to config.json ("mm_vision_select_layer": -2 for the released SQ-LLaVA models, whose '
            "scripts pass --mm_vision_select_layer -2)."
        )
    aspect = llava_config["image_aspect_ratio"]
    if aspect != "pad":
        raise ValueError(
            f"config.json has image_aspect_ratio={aspect!r}; the SQ-LLaVA processor reproduces 'pad' preprocessing only."
        )
    select_feature = llava_config.get("mm_vision_select_feature", "patch")
    strategies = {"patch": "default", "cls_patch": "full"}
    if select_feature not in strategies:
        raise ValueError(
            f"config.json has mm_vision_select_feature={select_feature!r}; expected 'patch' or 'cls_patch'."
        )

    vision = dict(vision_config)
    if "vision_config" in vision:  # a full CLIPConfig
        vision = dict(vision["vision_config"])
    vision = {k: v for k, v in vision.items() if k not in ("architectures", "transformers_version", "model_type")}
    vision_config_obj = CLIPVisionConfig(**vision)
    mm_hidden_size = llava_config.get("mm_hidden_size")
    if mm_hidden_size is not None and mm_hidden_size != vision_config_obj.hidden_size:
        raise ValueError(
            f"config.json has mm_hidden_size={mm_hidden_size} but the vision tower's hidden_size is "
            f"{vision_config_obj.hidden_size}: --vision-tower is not the tower this model was trained with."
        )
    text = {k: llava_config[k] for k in LLAMA_CONFIG_FIELDS if k in llava_config}
    text_config = LlamaConfig(**text, vocab_size=vocab_size, pad_token_id=pad_token_id, tie_word_embeddings=False)
    return SQLlavaConfig(
        vision_config=vision_config_obj,
        text_config=text_config,
        image_token_id=image_token_id,
        pad_token_id=pad_token_id,
        vision_feature_layer=llava_config["mm_vision_select_layer"],
        vision_feature_select_strategy=strategies[select_feature],
        projector_type="prototype",
        num_prototypes=num_prototypes,
        prototype_iterations=prototype_iterations,
    )


def _pad_vocab_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """Append rows equal to the mean of the existing ones (LLaVA's `initialize_vision_tokenizer` convention)."""
    if weight.shape[0] > rows:
        raise ConversionError(f"The checkpoint has {weight.shape[0]} vocabulary rows, more than the {rows} needed.")
    if weight.shape[0] == rows:
        return weight
    mean = weight.float().mean(dim=0, keepdim=True)
    return torch.cat([weight.float(), mean.expand(rows - weight.shape[0], -1)], dim=0)


# --------------------------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------------------------


def convert_state_dicts(
    config,
    *,
    llm_state: Mapping[str, torch.Tensor],
    vision_state: Mapping[str, torch.Tensor],
    projector_state: Mapping[str, torch.Tensor],
    llm_lora: tuple[Mapping[str, torch.Tensor], Mapping[str, Any]] | None = None,
    vit_lora: tuple[Mapping[str, torch.Tensor], Mapping[str, Any]] | None = None,
    sources: Mapping[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The full float32 SQ-LLaVA state dict from the released pieces (LoRA merged), and a report.

    Args:
        config (`SQLlavaConfig`): the target config (`build_sqllava_config`).
        llm_state: the LLaVA-format Llama weights (`model.*`, `lm_head.*`).
        vision_state: the CLIP weights (4.x or 5.x keys).
        projector_state: `non_lora_trainables` (released projector keys).
        llm_lora: `(weights, adapter_config)` of the LLM LoRA, or `None`.
        vit_lora: `(weights, adapter_config)` of the ViT LoRA, or `None`.
        sources: the file(s) each piece was read from (`"model-base"`, `"vision-tower"`, `"projector"`,
            `"llm-lora"`, `"vit-lora"`), named in the errors.

    Returns:
        `(state_dict, report)`; report has `dropped` (`{key: reason}`), `merged_lora` (`{"llm": n, "vit": n}`),
        `identity_adapters` (`["vit-lora"]` when its lora_B are all zero, see `merge_lora`) and
        `vit_lora_copies_checked` (tensors of the LLM adapter's ViT-LoRA copy found equal to `vit_lora`'s).

    Raises:
        ConversionError (a `ValueError`): besides unknown and missing keys, a ViT-LoRA copy in the LLM adapter that
            differs from `vit_lora` (the two folders come from different runs).
    """
    dropped: dict[str, str] = {}
    num_layers = config.num_vision_layers
    sources = dict(sources or {})

    def keep_used_vision_layers(new_key: str, key: str):
        match = re.match(r"^model\.vision_tower\.encoder\.layers\.(\d+)\.", new_key)
        if match and int(match.group(1)) >= num_layers:
            return None, f"CLIP layer {match.group(1)} runs after vision_feature_layer (only {num_layers} are used)"
        return new_key, None

    state = _map_state_dict(
        llm_state,
        LLM_KEY_RENAMES,
        LLM_DROPPED_KEYS,
        "model-base",
        dropped_log=dropped,
        where=sources.get("model-base"),
    )
    state.update(
        _map_state_dict(
            vision_state,
            VISION_KEY_RENAMES,
            VISION_DROPPED_KEYS,
            "vision-tower",
            dropped_log=dropped,
            key_filter=keep_used_vision_layers,
            where=sources.get("vision-tower"),
        )
    )
    projector = convert_projector_state_dict(projector_state, dropped_log=dropped, where=sources.get("projector"))
    state.update({f"model.multi_modal_projector.{k}": v for k, v in projector.items()})
    state = {k: v.float() for k, v in state.items()}

    merged = {"llm": 0, "vit": 0}
    identity_adapters: list[str] = []
    copies_checked = 0
    if llm_lora is not None and vit_lora is not None:
        copies_checked = check_vit_lora_copy(llm_lora[0], vit_lora[0], sources=sources)
    if llm_lora is not None:
        merged["llm"] = merge_lora(
            state,
            llm_lora[0],
            llm_lora[1],
            prefixes=LLM_LORA_PREFIXES,
            renames=LLM_KEY_RENAMES,
            dropped=LLM_LORA_DROPPED_KEYS,
            source="llm-lora",
            dropped_log=dropped,
            where=sources.get("llm-lora"),
            identity_adapters=identity_adapters,
        )
    if vit_lora is not None:
        merged["vit"] = merge_lora(
            state,
            vit_lora[0],
            vit_lora[1],
            prefixes=VIT_LORA_PREFIXES,
            renames=VISION_KEY_RENAMES,
            dropped=VISION_DROPPED_KEYS,
            source="vit-lora",
            dropped_log=dropped,
            key_filter=keep_used_vision_layers,
            where=sources.get("vit-lora"),
            identity_adapters=identity_adapters,
        )

    vocab = config.text_config.vocab_size
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if key in state:
            state[key] = _pad_vocab_rows(state[key], vocab)
    report = {
        "dropped": dropped,
        "merged_lora": merged,
        "identity_adapters": identity_adapters,
        "vit_lora_copies_checked": copies_checked,
    }
    return state, report


def check_vit_lora_copy(
    llm_adapter: Mapping[str, torch.Tensor],
    vit_adapter: Mapping[str, torch.Tensor],
    *,
    sources: Mapping[str, str] | None = None,
) -> int:
    """Check the LLM adapter's copy of the ViT-LoRA against the ViT-LoRA itself; returns the tensors compared.

    The authors save both from the same parameters (train.py:1239-1258), so every tensor present in both must be
    equal; a difference means the LLM adapter and Vit-lora/ come from different runs (or were altered).

    Raises:
        ConversionError (a `ValueError`): naming the first differing key of each file.
    """
    sources = sources or {}
    vit_by_key = {}
    for key, tensor in vit_adapter.items():
        prefix = next((p for p in VIT_LORA_PREFIXES if key.startswith(p)), None)
        if prefix is not None:
            # Below their prefixes both adapters name the CLIP model's own modules (`vision_model.encoder...`).
            vit_by_key[key[len(prefix) :]] = (key, tensor)
    compared = 0
    for key, tensor in sorted(llm_adapter.items()):
        if not key.startswith(LLM_LORA_VIT_COPY_PREFIX):
            continue
        vit_key, vit_tensor = vit_by_key.get(key[len(LLM_LORA_VIT_COPY_PREFIX) :], (None, None))
        if vit_key is None:
            continue
        if tuple(tensor.shape) != tuple(vit_tensor.shape) or not torch.equal(tensor.float(), vit_tensor.float()):
            raise ConversionError(
                f"The LLM adapter's copy of the ViT-LoRA differs from the ViT-LoRA: {key!r} "
                f"({sources.get('llm-lora', 'llm-lora')}) vs {vit_key!r} ({sources.get('vit-lora', 'vit-lora')}). "
                "The authors save both from the same parameters, so --model-path and --vit-lora come from different "
                "runs: pass the Vit-lora folder released with this model."
            )
        compared += 1
    return compared


@contextlib.contextmanager
def _empty_weights():
    """Parameters on the meta device (buffers stay real, e.g. rotary frequencies), when accelerate is installed."""
    try:
        from accelerate import init_empty_weights
    except ImportError:  # plain construction: slower (random init of every weight), same result after the load
        yield
        return
    with init_empty_weights(include_buffers=False):
        yield


# Which released piece provides each part of the model (for the errors of `build_model`).
_PIECE_OF_PREFIX = {
    "model.language_model.": "model-base",
    "lm_head.": "model-base",
    "model.vision_tower.": "vision-tower",
    "model.multi_modal_projector.": "projector",
}


def build_model(config, state_dict: Mapping[str, torch.Tensor], sources: Mapping[str, str] | None = None):
    """`SQLlavaForConditionalGeneration(config)` built without allocating weights, then loaded with `strict=True`.

    Args:
        config (`SQLlavaConfig`): the target config.
        state_dict: the converted weights (`convert_state_dicts`).
        sources (`Mapping[str, str]`, *optional*): the files of each released piece (see `convert_state_dicts`):
            a missing weight is reported with the file that should have provided it.
    """
    from modeling_sqllava import SQLlavaForConditionalGeneration

    with _empty_weights():
        model = SQLlavaForConditionalGeneration(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        by_piece: dict[str, list[str]] = {}
        for key in missing:
            piece = next((p for prefix, p in _PIECE_OF_PREFIX.items() if key.startswith(prefix)), "other")
            by_piece.setdefault(piece, []).append(key)
        where = "; ".join(
            f"from {piece}{f' ({sources[piece]})' if sources and piece in sources else ''}: {keys[:20]}"
            f"{' ...' if len(keys) > 20 else ''}"
            for piece, keys in by_piece.items()
        )
        raise ConversionError(
            f"The released checkpoints do not cover the SQ-LLaVA model: missing {len(missing)} weight(s) "
            f"{where or '[]'}; unexpected {unexpected[:20]}. A truncated or partial checkpoint file, or the files of "
            "another model size."
        )
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if mismatched:
        raise ConversionError(f"Shape mismatches between the released weights and the config: {mismatched[:20]}.")
    model.load_state_dict({k: v.contiguous() for k, v in state_dict.items()}, strict=True, assign=True)
    on_meta = [name for name, p in model.named_parameters() if p.is_meta]
    if on_meta:
        raise ConversionError(f"Parameters left on the meta device after loading: {on_meta[:20]}.")
    return model.float().eval()


def convert_original_checkpoint(
    *,
    model_base: str,
    model_path: str,
    output_dir: str,
    vit_lora: str | None = None,
    vision_tower: str | None = None,
    tokenizer: str | None = None,
    dtype: str = "bfloat16",
    max_shard_size: str = "5GB",
    num_prototypes: int = ORIGINAL_NUM_PROTOTYPES,
    prototype_iterations: int = ORIGINAL_PROTOTYPE_ITERATIONS,
    verify: bool = True,
    repo_id: str | None = None,
    base_model_id_for_card: str | list[str] | None = None,
    license: str = "llama2",
    allow_other_vision_tower: bool = False,
) -> dict[str, Any]:
    r"""Convert a released SQ-LLaVA checkpoint into a verified Hub-ready folder.

    Args:
        model_base (`str`): folder or Hub id of the LLaVA-format base LLM (weights and tokenizer).
        model_path (`str`): folder or Hub id with `config.json`, the LLM LoRA and `non_lora_trainables`.
        output_dir (`str`): where the export is written.
        vit_lora (`str`, *optional*): the ViT-LoRA adapter folder (default `<model_path>/Vit-lora` when it exists;
            without one the CLIP tower is used as released, with a warning).
        vision_tower (`str`, *optional*): CLIP folder or Hub id (default `mm_vision_tower` of the config). Its last
            path component must be that of `mm_vision_tower` (a local copy of the same repo), unless
            `allow_other_vision_tower`.
        tokenizer (`str`, *optional*): tokenizer folder (default `model_base`, then `model_path`).
        dtype (`str`, *optional*, defaults to `"bfloat16"`): export dtype (the released models were trained in
            bfloat16; `"float16"` is what the authors' evaluation ran in).
        max_shard_size (`str`, *optional*, defaults to `"5GB"`): safetensors shard size.
        num_prototypes (`int`, *optional*, defaults to 256): K, hard-coded to 256 by the original builder.
        prototype_iterations (`int`, *optional*, defaults to 2): T, hard-coded to 2 by the original builder.
        verify (`bool`, *optional*, defaults to `True`): reload in a fresh process and compare logits.
        repo_id (`str`, *optional*): the repo named in the model card.
        base_model_id_for_card (`str` or `list[str]`, *optional*): card `base_model` metadata (default: the Hub ids
            among `model_path`, `model_base`).
        license (`str`, *optional*, defaults to `"llama2"`): card license.
        allow_other_vision_tower (`bool`, *optional*, defaults to `False`): accept a `vision_tower` that is not the
            config's `mm_vision_tower` (the converted model then differs from the released one).

    Returns:
        `dict`: the export report (`files`, `max_relative_error`, `tolerance`, ...) plus `dropped` (every released key
        not carried over, with its reason), `merged_lora` (LoRA layers merged per tower), `identity_adapters` (the
        adapters whose lora_B are all zero, merged as the identity), `vit_lora_copies_checked` and `vision_tower`
        (the CLIP checkpoint used).

    Raises:
        ValueError: `vision_tower` names another tower than `mm_vision_tower` (without `allow_other_vision_tower`), a
            config field the conversion needs is missing or unsupported, or a released file is damaged.

    Example:

    ```python
    >>> report = convert_original_checkpoint(
    ...     model_base="ShareGPT4V-7B_Pretrained_vit-large336-l12_vicuna-7b-v1.5", model_path="sqllava-lora-7b",
    ...     output_dir="sqllava-7b-hf",
    ... )  # doctest: +SKIP
    ```
    """
    from transformers import AutoTokenizer

    from hub_upload.export import (
        _check_dtype,
        build_model_card,
        compute_reference,
        fixed_verification_inputs,
        verify_export_folder,
        write_export_folder,
    )
    from hub_upload.files import CLIP_VISION_TYPES, LLAVA_TYPES, check_types, read_json
    from processing import SQLlavaProcessor, add_sqllava_special_tokens

    _check_dtype(dtype)
    model_path_dir = resolve_folder(model_path, "model_path")
    model_base_dir = resolve_folder(model_base, "model_base")
    config_path = model_path_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"model_path={model_path!r} has no config.json (the LLaVA config of the released model).")
    llava_config = read_json(config_path, what="the LLaVA config.json of the released model")
    check_types(llava_config, LLAVA_TYPES, config_path)

    if vit_lora is None and (model_path_dir / "Vit-lora").is_dir():
        vit_lora = str(model_path_dir / "Vit-lora")
    if vit_lora is None:
        logger.warning("No ViT-LoRA given (and no %s/Vit-lora): the CLIP tower is used without it.", model_path)
    configured_tower = llava_config.get("mm_vision_tower")
    if vision_tower and configured_tower and not allow_other_vision_tower:
        given, configured = _tower_name(vision_tower), _tower_name(configured_tower)
        if given != configured:
            # The authors' loader always builds the tower from mm_vision_tower (builder.py:140-142,
            # clip_encoder.py:30-31); an OpenAI CLIP in place of ShareGPT4V's fine-tuned one has the same shapes, so
            # nothing else would catch it.
            raise ValueError(
                f"vision_tower={vision_tower!r} ({given!r}) is not the tower the model was trained with: "
                f"{config_path} has mm_vision_tower={configured_tower!r} ({configured!r}). Pass that tower (or a "
                "local copy of it, same folder name), or --allow-other-vision-tower (allow_other_vision_tower=True) "
                "to convert with another one on purpose."
            )
    vision_tower = vision_tower or configured_tower
    if not vision_tower:
        raise ValueError("config.json has no mm_vision_tower; pass --vision-tower (the CLIP checkpoint).")
    vision_dir = resolve_folder(vision_tower, "vision_tower")
    vision_config_path = vision_dir / "config.json"
    vision_config = read_json(vision_config_path, what="the CLIP config.json of the vision tower")
    check_types(vision_config, {"vision_config": CLIP_VISION_TYPES, **CLIP_VISION_TYPES}, vision_config_path)

    tokenizer_source = tokenizer or next(
        (str(d) for d in (model_base_dir, model_path_dir) if (d / "tokenizer_config.json").is_file()), None
    )
    if tokenizer_source is None:
        raise ValueError(f"No tokenizer in {model_base!r} or {model_path!r}; pass --tokenizer (the Vicuna tokenizer).")
    # Never the folder's own tokenizer code (and never transformers' interactive "run it? [y/N]" prompt): a known
    # tokenizer class loads with transformers' own code, whatever the folder's `auto_map` says.
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=False)
    except ValueError as error:
        if "trust_remote_code" not in str(error):
            raise
        raise ValueError(
            f"{Path(tokenizer_source, 'tokenizer_config.json')} asks for custom tokenizer code, and the converter "
            "never runs code from the folders it converts: pass --tokenizer with a standard Llama/Vicuna tokenizer."
        ) from None
    original_vocab = len(tok)
    add_sqllava_special_tokens(tok)
    image_token_id, pad_token_id = tok.convert_tokens_to_ids("<image>"), tok.pad_token_id

    def files_of(folder: Path, stems: tuple[str, ...]) -> str:
        return ", ".join(str(path) for path in weights_files(folder, stems))

    sources = {
        "model-base": files_of(model_base_dir, ("model", "pytorch_model")),
        "vision-tower": files_of(vision_dir, ("model", "pytorch_model")),
        "projector": files_of(model_path_dir, ("non_lora_trainables",)),
    }
    llm_state = load_weights(model_base_dir, ("model", "pytorch_model"))
    embed_rows = llm_state["model.embed_tokens.weight"].shape[0] if "model.embed_tokens.weight" in llm_state else 0
    if embed_rows < original_vocab:
        raise ConversionError(
            f"model_base ({sources['model-base']}) has {embed_rows} rows in `model.embed_tokens.weight` but its "
            f"tokenizer {original_vocab} tokens: not a matching pair."
        )
    vocab_size = max(embed_rows, math.ceil(len(tok) / VOCAB_MULTIPLE) * VOCAB_MULTIPLE)
    config = build_sqllava_config(
        llava_config,
        vision_config,
        vocab_size=vocab_size,
        image_token_id=image_token_id,
        pad_token_id=pad_token_id,
        num_prototypes=num_prototypes,
        prototype_iterations=prototype_iterations,
    )

    llm_lora = None
    if (model_path_dir / "adapter_config.json").is_file():
        sources["llm-lora"] = files_of(model_path_dir, ("adapter_model",))
        llm_lora = (
            load_weights(model_path_dir, ("adapter_model",)),
            read_adapter_config(model_path_dir, "model_path"),
        )
    else:
        logger.warning("%s has no adapter_config.json: no LLM LoRA to merge.", model_path)
    vit = None
    if vit_lora is not None:
        vit_dir = resolve_folder(vit_lora, "vit_lora")
        sources["vit-lora"] = files_of(vit_dir, ("adapter_model",))
        vit = (load_weights(vit_dir, ("adapter_model",)), read_adapter_config(vit_dir, "vit_lora"))
    state, conversion = convert_state_dicts(
        config,
        llm_state=llm_state,
        vision_state=load_weights(vision_dir, ("model", "pytorch_model")),
        projector_state=load_weights(model_path_dir, ("non_lora_trainables",)),
        llm_lora=llm_lora,
        vit_lora=vit,
        sources=sources,
    )
    del llm_state
    model = build_model(config, state, sources=sources)
    del state
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = pad_token_id

    image_processor_kwargs = {}
    preprocessor = vision_dir / "preprocessor_config.json"
    if preprocessor.is_file():
        values = read_json(preprocessor, what="the CLIP preprocessor_config.json")
        image_processor_kwargs = {k: values[k] for k in ("image_mean", "image_std") if k in values}
    vision = config.vision_config
    processor = SQLlavaProcessor.from_tokenizer(
        tok,
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        image_seq_length=config.image_seq_length,
        **image_processor_kwargs,
    )

    inputs = fixed_verification_inputs(config)
    reference = compute_reference(model, inputs) if verify else None
    hub_ids = [p for p in (model_path, model_base) if not Path(p).exists() and p.count("/") == 1]
    card = build_model_card(
        config,
        repo_id=repo_id or f"your-name/{Path(output_dir).resolve().name}",
        base_model=model_base,
        base_model_id_for_card=base_model_id_for_card or hub_ids or None,
        training_config={
            "source checkpoint": {
                "model_base": model_base,
                "model_path": model_path,
                "vit_lora": vit_lora,
                "vision_tower": vision_tower,
                "merged LLM-LoRA layers": conversion["merged_lora"]["llm"],
                "merged ViT-LoRA layers": conversion["merged_lora"]["vit"],
                # An all-zero lora_B adapter merges as the identity: the card says what the weights really contain.
                **(
                    {"identity adapters (all lora_B zero, merged as no change)": conversion["identity_adapters"]}
                    if conversion["identity_adapters"]
                    else {}
                ),
            }
        },
        license=license,
        description=(
            "SQ-LLaVA converted from the authors' released checkpoint with `hub_upload/convert_original.py`: the LLM "
            "LoRA and the ViT LoRA are merged into the weights, the cluster projector is SQ-LLaVA's prototype "
            "extractor, and `<image>`/`<pad>` are added to the Vicuna tokenizer (ids 32000/32001)."
        ),
    )
    files = write_export_folder(
        model, processor, output_dir, dtype=dtype, max_shard_size=max_shard_size, model_card=card
    )
    del model
    report: dict[str, Any] = {
        "output_dir": str(output_dir),
        "files": files,
        "dtype": dtype,
        "verified": False,
        "vision_tower": vision_tower,
        **conversion,
    }
    if verify:
        report.update(verify_export_folder(output_dir, inputs, reference, dtype=dtype))
    for key, reason in sorted(conversion["dropped"].items()):
        logger.debug("dropped %s: %s", key, reason)
    logger.info(
        "Converted: %d LLM-LoRA and %d ViT-LoRA layers merged, %d released keys dropped by rule.",
        conversion["merged_lora"]["llm"],
        conversion["merged_lora"]["vit"],
        len(conversion["dropped"]),
    )
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--model-base", required=True, help="LLaVA-format base LLM (folder or Hub id).")
    parser.add_argument("--model-path", required=True, help="Released model: config.json, LoRA, non_lora_trainables.")
    parser.add_argument("--vit-lora", default=None, help="ViT-LoRA adapter (default <model-path>/Vit-lora).")
    parser.add_argument("--vision-tower", default=None, help="CLIP checkpoint (default mm_vision_tower).")
    parser.add_argument(
        "--allow-other-vision-tower",
        action="store_true",
        help="Accept a --vision-tower of another name than the config's mm_vision_tower.",
    )
    parser.add_argument("--tokenizer", default=None, help="Tokenizer folder (default: --model-base).")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--max-shard-size", default="5GB")
    parser.add_argument("--num-prototypes", type=int, default=ORIGINAL_NUM_PROTOTYPES)
    parser.add_argument("--prototype-iterations", type=int, default=ORIGINAL_PROTOTYPE_ITERATIONS)
    parser.add_argument("--base-model-id-for-card", nargs="+", default=None)
    parser.add_argument("--no-verify", action="store_true", help="Skip the fresh-process logits check.")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="Push the verified folder to this repo.")
    parser.add_argument("--private", action="store_true", help="Create the pushed repo as private.")
    args = parser.parse_args(argv)
    if args.push_to_hub and args.no_verify:
        parser.error("--push-to-hub needs the verification: drop --no-verify.")
    report = convert_original_checkpoint(
        model_base=args.model_base,
        model_path=args.model_path,
        output_dir=args.output_dir,
        vit_lora=args.vit_lora,
        vision_tower=args.vision_tower,
        tokenizer=args.tokenizer,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        num_prototypes=args.num_prototypes,
        prototype_iterations=args.prototype_iterations,
        verify=not args.no_verify,
        repo_id=args.push_to_hub,
        base_model_id_for_card=args.base_model_id_for_card,
        allow_other_vision_tower=args.allow_other_vision_tower,
    )
    if args.push_to_hub:
        from hub_upload.push import push_folder

        report["commit"] = push_folder(args.output_dir, args.push_to_hub, private=args.private)
    summary = {k: v for k, v in report.items() if k != "dropped"}
    summary["dropped"] = len(report["dropped"])
    print(json.dumps(summary, indent=2, default=str))
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
