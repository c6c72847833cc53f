"""Reading the checkpoint files a user hands to the exporter and the converter, with errors that name file and key.

A truncated download, a hand-edited config or a file from another model otherwise surfaces as a bare
`SafetensorError: incomplete metadata`, a `JSONDecodeError`, a silently skipped adapter tensor or a `TypeError` deep in
`nn.Linear`. Every function here raises instead a `ValueError` (unreadable or missing content) or a `TypeError` (a
value of the wrong type) whose message starts with the file's path and names the key, and says what to do.

Weights are read without running code: safetensors, or pickles through `torch.load(weights_only=True)`, which
refuses anything but tensors and plain containers (a pickle carrying a payload is reported, never executed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Type rules for config values: "int" (not bool), "number" (int or float, not bool), "str", "bool", "dict", "list";
# a trailing "?" also allows null; "a|b" allows either.
LLAMA_TYPES = {
    "vocab_size": "int", "hidden_size": "int", "intermediate_size": "int", "num_hidden_layers": "int",
    "num_attention_heads": "int", "num_key_value_heads": "int?", "max_position_embeddings": "int",
    "head_dim": "int?", "rms_norm_eps": "number", "rope_theta": "number", "initializer_range": "number",
    "attention_dropout": "number", "attention_bias": "bool", "mlp_bias": "bool", "pretraining_tp": "int",
    "hidden_act": "str", "rope_scaling": "dict?", "bos_token_id": "int|list?", "eos_token_id": "int|list?",
    "pad_token_id": "int?", "tie_word_embeddings": "bool",
}  # fmt: skip
CLIP_VISION_TYPES = {
    "hidden_size": "int", "intermediate_size": "int", "num_hidden_layers": "int", "num_attention_heads": "int",
    "image_size": "int", "patch_size": "int", "num_channels": "int", "projection_dim": "int",
    "layer_norm_eps": "number", "hidden_act": "str", "attention_dropout": "number", "initializer_range": "number",
}  # fmt: skip
# The LLaVA `config.json` of the released checkpoints: Llama fields plus the multimodal settings the converter reads.
LLAVA_TYPES = {
    **LLAMA_TYPES, "mm_hidden_size": "int", "mm_vision_select_layer": "int", "mm_projector_type": "str",
    "mm_vision_tower": "str", "mm_vision_select_feature": "str", "image_aspect_ratio": "str",
    "mm_use_im_start_end": "bool",
}  # fmt: skip
SQLLAVA_TYPES = {
    "image_token_id": "int", "pad_token_id": "int?", "num_prototypes": "int", "prototype_iterations": "int",
    "image_seq_length": "int", "vision_feature_layer": "int", "projector_type": "str",
    "vision_feature_select_strategy": "str", "text_config": LLAMA_TYPES, "vision_config": CLIP_VISION_TYPES,
}  # fmt: skip
LORA_ADAPTER_TYPES = {
    "r": "int", "lora_alpha": "number", "lora_dropout": "number", "target_modules": "str|list?",
    "rank_pattern": "dict?", "alpha_pattern": "dict?", "modules_to_save": "list?", "use_rslora": "bool",
    "use_dora": "bool", "fan_in_fan_out": "bool", "bias": "str", "peft_type": "str",
}  # fmt: skip
_TYPE_NAMES = {"int": "an integer", "number": "a number", "str": "a string", "bool": "true or false",
               "dict": "an object", "list": "a list"}  # fmt: skip


def read_json(path: str | os.PathLike, *, what: str) -> dict[str, Any]:
    """The JSON object in `path`; `what` says in the error what the file should be ("the LLaVA config.json").

    Raises:
        ValueError: the file is missing or is not valid JSON; the message names the path.
        TypeError: the JSON is not an object.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file; expected {what}.")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a UTF-8 text file ({error}); expected {what}.") from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); expected {what}. "
            "It may be truncated or hand-edited: restore it from the original checkpoint."
        ) from None
    if not isinstance(payload, dict):
        raise TypeError(f"{path} holds a JSON {type(payload).__name__}, not an object; expected {what}.")
    return payload


def check_types(
    payload: Mapping[str, Any], types: Mapping[str, Any], path: str | os.PathLike, prefix: str = ""
) -> None:
    """Check the values of `payload` (read from `path`) against `types` (see `LLAMA_TYPES`); absent keys pass.

    Raises:
        TypeError: naming the file, the dotted key, the value and the type it must have.
    """
    for key, rule in types.items():
        if key not in payload:
            continue
        value = payload[key]
        if isinstance(rule, Mapping):
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise TypeError(f"{path}: `{prefix}{key}` = {value!r} must be an object of settings.")
            check_types(value, rule, path, prefix=f"{prefix}{key}.")
            continue
        if not _matches(value, rule):
            allowed = " or ".join(_TYPE_NAMES[name] for name in rule.rstrip("?").split("|"))
            if rule.endswith("?"):
                allowed += " or null"
            raise TypeError(
                f"{path}: `{prefix}{key}` = {value!r} ({type(value).__name__}) must be {allowed}; fix the value in "
                "that file (a quoted number is a string)."
            )


def _matches(value: Any, rule: str) -> bool:
    if value is None:
        return rule.endswith("?")
    for name in rule.rstrip("?").split("|"):
        if name == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if name == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if name == "str" and isinstance(value, str):
            return True
        if name == "bool" and isinstance(value, bool):
            return True
        if name == "dict" and isinstance(value, Mapping):
            return True
        if name == "list" and isinstance(value, list):
            return True
    return False


def safetensors_keys(path: str | os.PathLike) -> list[str]:
    """The tensor names of a safetensors file, after checking that its header is complete (no data is read).

    Raises:
        ValueError: the file is truncated or not a safetensors file, naming the path.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except Exception as error:  # noqa: BLE001 - SafetensorError, OSError: a damaged file, whatever the library calls it
        raise ValueError(
            f"{path} is not a readable safetensors file ({error}); it is probably truncated (an interrupted copy or "
            "download) or damaged: copy or save it again."
        ) from None


def load_state_file(path: str | os.PathLike) -> dict[str, Any]:
    """The tensors of a `.safetensors` file, or of a pickle `.bin`/`.pt`/`.pth` read with `weights_only=True`.

    Raises:
        ValueError: the file is truncated or damaged, has another format, or is a pickle holding more than tensors
            (possibly a hostile payload: it was not run), naming the path.
    """
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        safetensors_keys(path)
        try:
            return load_file(str(path))
        except Exception as error:  # noqa: BLE001 - reported with the file name
            raise ValueError(f"{path} could not be read as safetensors ({error}); copy or save it again.") from None
    if path.suffix in (".bin", ".pt", ".pth"):
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - UnpicklingError, RuntimeError (truncated zip), EOFError, ...
            kind = type(error).__name__
            if "weights_only" in str(error) or kind == "UnpicklingError":
                raise ValueError(
                    f"{path} is a pickle that holds more than tensors, so it was not loaded ({kind}: "
                    f"{str(error).splitlines()[0]}). Loading it with weights_only=False would run whatever code it "
                    "carries: get the weights as safetensors, or from a source you trust."
                ) from None
            raise ValueError(f"{path} could not be read ({kind}: {error}); it is probably truncated.") from None
    raise ValueError(f"{path}: unsupported weights file; expected .safetensors, .bin, .pt or .pth.")


def state_file_keys(path: str | os.PathLike) -> list[str]:
    """The tensor names of a weights file (`safetensors_keys` for safetensors, `load_state_file` otherwise)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return safetensors_keys(path)
    return list(load_state_file(path))


def check_safetensors_in(folder: str | os.PathLike) -> None:
    """`safetensors_keys` on every `*.safetensors` file directly in `folder` (a local checkpoint)."""
    for path in sorted(Path(folder).glob("*.safetensors")):
        safetensors_keys(path)
