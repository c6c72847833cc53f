"""Load an SQ-LLaVA model and its processor from a folder or Hub id a user names, without running foreign code.

A model folder (or Hub repo) may ship Python files that `trust_remote_code=True` would import and run: whoever wrote
the folder chooses that code. Every entry point that takes `--model` from a user loads through
[`load_model_and_processor`], which runs remote code only when the user asked for it:

- an SQ-LLaVA folder whose code files are byte-identical to the ones this sqllava installation ships (what
  `hub_upload.export` and `save_pretrained` write) loads with the package's own classes: nothing from the folder is
  imported, whatever its `auto_map` says;
- a folder of a model transformers implements natively (e.g. `llava`) loads with the Auto classes, no remote code;
- anything else needs `trust_remote_code=True` (`--trust-remote-code`); without it the error names the files that
  differ and says how to proceed.

>>> from recipes.loading import load_model_and_processor
>>> model, processor = load_model_and_processor("outputs/tiny/merged", dtype="float32")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DTYPES = ("auto", "bfloat16", "float16", "float32")
# A Hub id: `name` or `owner/name` (letters, digits, `-`, `_`, `.`), as `huggingface_hub` validates it.
_HUB_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")
# The files that say which classes a folder maps to remote code.
_AUTO_MAP_FILES = ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


class RemoteCodeError(ValueError):
    """A folder ships code that loading would execute, and the user did not pass `trust_remote_code=True`."""


def resolve_model_path(name_or_path: str | os.PathLike) -> tuple[str, bool]:
    """`(path or Hub id, is_local)` for what a user passed as `--model`.

    An existing folder is local. A path that does not exist and cannot be a Hub id (absolute, `./`, `~`, more than
    one `/`, a file) is reported as a missing folder, instead of the Hub client's "Repo id must be in the form ..."
    that a misspelled folder would otherwise get.

    Raises:
        ValueError: the folder does not exist (or names a file), naming the path.
    """
    text = os.fspath(name_or_path)
    if os.path.isdir(text):
        return text, True
    if os.path.exists(text):
        raise ValueError(f"--model {text!r} is a file; pass the model folder (the one holding config.json).")
    expanded = os.path.expanduser(text)
    if expanded != text or os.path.isabs(text) or text.startswith(".") or not _HUB_ID.match(text):
        raise ValueError(
            f"--model {text!r}: no such folder (and it cannot be a Hub id, which looks like 'owner/name'). "
            "Check the path."
        )
    return text, False


def shipped_code_files() -> dict[str, bytes]:
    """The code files this installation ships with a model (name -> bytes), as `hub_upload.export` writes them."""
    from hub_upload.export import code_files

    return {path.name: path.read_bytes() for path in code_files()}


def _download_metadata(repo_id: str, revision: str | None, token: str | bool | None) -> Path:
    """The Hub repo's config files and Python files only (no weights), in the local cache."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, revision=revision, token=token, allow_patterns=["*.py", *_AUTO_MAP_FILES]))


def foreign_code_files(folder: str | os.PathLike) -> dict[str, str]:
    """The code files of `folder` that loading with `trust_remote_code=True` could run and that this installation
    does not ship byte for byte: `{file name: why}`. Empty when the folder only holds the installed code (or none).

    Every `*.py` file counts (a relative import can pull any of them in), and so does every module an `auto_map`
    entry names, present or not (a missing one would be looked up elsewhere, e.g. in another repo: `repo--module`).
    """
    folder = Path(folder)
    shipped = shipped_code_files()
    foreign: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        relative = path.relative_to(folder).as_posix()
        expected = shipped.get(relative)
        if expected is None:
            foreign[relative] = "not a file sqllava ships"
        elif path.read_bytes() != expected:
            foreign[relative] = "differs from the installed sqllava's copy"
    for name in _AUTO_MAP_FILES:
        config_path = folder / name
        if not config_path.is_file():
            continue
        try:
            auto_map = json.loads(config_path.read_text(encoding="utf-8")).get("auto_map") or {}
        except (ValueError, UnicodeDecodeError, AttributeError) as error:
            raise ValueError(f"{config_path} is not a JSON object ({error}); the folder is damaged.") from None
        references = []
        for value in auto_map.values():
            references.extend(value if isinstance(value, (list, tuple)) else [value])
        for reference in references:
            if not isinstance(reference, str) or not reference:
                continue
            module = reference.rsplit(".", 1)[0]
            if "--" in module:  # `other/repo--module.Class`: code from another repository
                foreign[f"{name}: {reference}"] = "auto_map points to code in another repository"
            elif f"{module}.py" not in shipped:
                foreign.setdefault(f"{module}.py", f"named by {name}'s auto_map, not a file sqllava ships")
    return foreign


def _model_type(folder: Path) -> str | None:
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    try:
        return json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, UnicodeDecodeError, AttributeError) as error:
        raise ValueError(f"{config_path} is not a JSON object ({error}); the folder is damaged.") from None


def load_model_and_processor(
    name_or_path: str | os.PathLike,
    *,
    trust_remote_code: bool = False,
    dtype: str = "auto",
    device: str | None = None,
    attn_implementation: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
):
    """Load `(model, processor)` for inference from a folder or Hub id, running remote code only when asked.

    Args:
        name_or_path: a model folder or a Hub id.
        trust_remote_code: allow the folder's own Python files to run. Not needed for folders written by this
            sqllava (their code is the installed package's) or for models transformers implements natively.
        dtype: `"auto"` (the checkpoint's), `"bfloat16"`, `"float16"` or `"float32"`.
        device: defaults to CUDA when available, else CPU.
        attn_implementation: `"sdpa"`, `"eager"`, `"flash_attention_2"`, ...; the model's default when None.
        revision: Hub revision (branch, tag or commit).
        token: Hub token (defaults to the logged-in one).

    Returns:
        `(model, processor)`, the model in eval mode on `device`.

    Raises:
        ValueError: a missing folder, a damaged config, or an unknown dtype.
        RemoteCodeError: the folder ships code this installation does not, and `trust_remote_code` is False.
    """
    import torch
    import transformers

    dtypes = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if dtype not in dtypes:
        raise ValueError(f"dtype={dtype!r} is not one of {DTYPES}.")
    path, is_local = resolve_model_path(name_or_path)
    folder = Path(path) if is_local else _download_metadata(path, revision, token)
    model_type = _model_type(folder)
    # transformers 5 names the argument `dtype`; 4.57 knows only `torch_dtype`.
    dtype_key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    kwargs: dict[str, Any] = {dtype_key: dtypes[dtype], "revision": revision, "token": token}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation

    foreign = foreign_code_files(folder)
    if model_type == "sqllava" and not foreign:
        # The folder's code (if any) is the installed package's: use the package's classes, import nothing from it.
        from modeling_sqllava import SQLlavaForConditionalGeneration
        from processing import SQLlavaProcessor

        model = SQLlavaForConditionalGeneration.from_pretrained(path, **kwargs)
        processor = SQLlavaProcessor.from_pretrained(path, revision=revision, token=token)
    else:
        if foreign and not trust_remote_code:
            listing = "\n".join(f"  {name}: {why}" for name, why in sorted(foreign.items()))
            raise RemoteCodeError(
                f"{path} ships code that loading it would run:\n{listing}\nIt is not the code of the installed "
                "sqllava, so nothing was loaded. If you trust its author, pass --trust-remote-code "
                "(trust_remote_code=True); if it is an SQ-LLaVA model you exported with another sqllava version, "
                "export it again with this one (python -m hub_upload.export)."
            )
        if foreign:
            logger.warning("Running the code files of %s (trust_remote_code=True): %s", path, sorted(foreign))
        auto_class = getattr(transformers, "AutoModelForImageTextToText", None) or transformers.AutoModelForVision2Seq
        model = auto_class.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
        processor = transformers.AutoProcessor.from_pretrained(
            path, trust_remote_code=trust_remote_code, revision=revision, token=token
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor


def add_trust_remote_code_argument(parser) -> None:
    """The `--trust-remote-code` flag every command that loads a user's `--model` takes (off by default)."""
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="Allow the model folder's own Python files to run. Not needed for folders exported by this sqllava "
        "(their code is the installed package's, which is used instead) nor for models transformers implements.",
    )
