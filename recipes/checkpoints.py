"""Checkpoints that are either complete or absent, and a run fingerprint that a resumed run must match.

- `SQLlavaTrainer` writes each `checkpoint-N` into a temporary sibling folder (`.partial-checkpoint-N/`) and renames
  it into place only when every rank has finished writing and the manifest `sqllava_checkpoint.json` (the file list
  with sizes, the run fingerprint, the run's skip counts so far) is written. A job killed mid-save leaves a
  `.partial-*` folder, never a `checkpoint-N` that looks finished.
- `checkpoint_problem` says why a folder cannot be resumed from (trainer state, model or adapter weights, optimizer,
  scheduler and RNG states, each checked to be present and readable without loading it: JSON parsed, safetensors
  headers and sizes, the zip directory of torch files), `last_complete_checkpoint` picks the newest one without a
  problem and logs every newer one it skips, and why.
- `run_fingerprint` describes what the run trains: the configuration minus where it writes and how it reports, the
  data files (size and SHA-256 of their first MiB), the model path. `fingerprint_differences` lists what changed;
  the trainer refuses to resume across a difference unless `--allow_resume_changes`.

>>> from recipes.checkpoints import last_complete_checkpoint
>>> last_complete_checkpoint("outputs/sqllava-7b-finetune")  # doctest: +SKIP
'outputs/sqllava-7b-finetune/checkpoint-1200'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST_NAME = "sqllava_checkpoint.json"
SKIPS_NAME = "skipped_samples.json"
STAGING_PREFIX = ".partial-"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_HASHED_BYTES = 1 << 20

# Configuration keys that say where a run writes, how it reports or how it reads its data, not what it trains: a
# resumed run may change them freely. Everything else is part of the fingerprint.
FINGERPRINT_EXCLUDED_KEYS = frozenset(
    {
        "output_dir", "logging_dir", "run_name", "resume_from_checkpoint", "overwrite_output_dir", "report_to",
        "push_to_hub", "hub_token", "hub_private", "export_dir", "export_dtype", "disable_tqdm", "local_rank",
        "dataloader_num_workers", "dataloader_prefetch_factor", "dataloader_pin_memory",
        "dataloader_persistent_workers", "ddp_timeout", "allow_resume_changes", "max_skip_fraction",
        "log_sample_ids", "audit_trainable", "skip_memory_metrics", "project", "trackio_space_id",
    }
)  # fmt: skip
FINGERPRINT_EXCLUDED_PREFIXES = ("logging_", "save_", "hub_", "log_", "eval_", "per_device_eval", "push_to_hub_")


# ----------------------------------------------------------------------------------------------------------------------
# Completeness
# ----------------------------------------------------------------------------------------------------------------------


def checkpoint_step(path: str) -> int | None:
    """N for a folder named `checkpoint-N`, else None."""
    match = _CHECKPOINT_RE.match(os.path.basename(os.path.normpath(path)))
    return int(match.group(1)) if match else None


def checkpoint_problem(path: str) -> str | None:
    """Why `path` cannot be resumed from, or None when it is complete and readable.

    Checked without loading any tensor: `trainer_state.json` parses; the weights (`adapter_model.safetensors`,
    `model.safetensors`, a sharded index and its shards, `*.bin`, or DeepSpeed / FSDP folders) are present, each
    safetensors file holding every byte its header promises and each torch file a readable zip directory; so are
    `optimizer.pt`, `scheduler.pt` and the RNG state of every rank. The manifest, when present, lists every file
    with its size: one missing or of another size is a problem too.
    """
    if not os.path.isdir(path):
        return "not a folder"
    names = set(os.listdir(path))
    manifest = None
    if MANIFEST_NAME in names:
        try:
            manifest = _read_json(os.path.join(path, MANIFEST_NAME))
        except ValueError as error:
            return f"{MANIFEST_NAME} is unreadable ({error})"
        for name, size in manifest.get("files", {}).items():
            file = os.path.join(path, name)
            if not os.path.isfile(file):
                return f"{name} is missing (listed in {MANIFEST_NAME})"
            if os.path.getsize(file) != size:
                return f"{name} has {os.path.getsize(file)} bytes, {size} when saved"
    if "trainer_state.json" not in names:
        return "no trainer_state.json (the save was interrupted)"
    try:
        state = _read_json(os.path.join(path, "trainer_state.json"))
    except ValueError as error:
        return f"trainer_state.json is unreadable ({error})"
    if not isinstance(state.get("global_step"), int):
        return "trainer_state.json has no global_step"
    problem = _weights_problem(path, names)
    if problem:
        return problem
    save_only_model = bool(manifest and manifest.get("save_only_model"))
    deepspeed = any(n.startswith("global_step") and os.path.isdir(os.path.join(path, n)) for n in names)
    fsdp_optimizer = any(n.startswith("optimizer") and os.path.isdir(os.path.join(path, n)) for n in names)
    if not save_only_model:
        if not deepspeed and not fsdp_optimizer:
            optimizer = "optimizer.pt" if "optimizer.pt" in names else "optimizer.bin"
            if optimizer not in names:
                return "no optimizer.pt (resuming would silently restart the optimizer)"
            problem = _torch_file_problem(os.path.join(path, optimizer))
            if problem:
                return problem
        if "scheduler.pt" in names:
            problem = _torch_file_problem(os.path.join(path, "scheduler.pt"))
            if problem:
                return problem
        elif not deepspeed:
            return "no scheduler.pt (resuming would restart the learning-rate schedule)"
        if manifest is not None:
            world_size = int(manifest.get("world_size", 1))
            rng_files = ["rng_state.pth"] if world_size == 1 else [f"rng_state_{r}.pth" for r in range(world_size)]
        else:  # written by another tool: whatever RNG files are there, at least one
            rng_files = sorted(n for n in names if re.match(r"^rng_state(_\d+)?\.pth$", n))
            if not rng_files:
                return "no rng_state*.pth"
        for name in rng_files:
            if name not in names:
                return f"no {name}"
            problem = _torch_file_problem(os.path.join(path, name))
            if problem:
                return problem
    return None


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{type(error).__name__}: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"a JSON {type(value).__name__}, not an object")  # noqa: TRY004 - reported as text
    return value


def _weights_problem(path: str, names: set[str]) -> str | None:
    for index in ("adapter_model.safetensors.index.json", "model.safetensors.index.json"):
        if index in names:
            try:
                shards = set(_read_json(os.path.join(path, index)).get("weight_map", {}).values())
            except ValueError as error:
                return f"{index} is unreadable ({error})"
            for shard in sorted(shards):
                problem = _safetensors_problem(os.path.join(path, shard))
                if problem:
                    return problem
            return None
    for name in ("adapter_model.safetensors", "model.safetensors"):
        if name in names:
            return _safetensors_problem(os.path.join(path, name))
    for name in ("adapter_model.bin", "pytorch_model.bin"):
        if name in names:
            return _torch_file_problem(os.path.join(path, name))
    if any(n.startswith(("pytorch_model_fsdp", "global_step")) for n in names):
        return None  # FSDP sharded / DeepSpeed weights: folders their own loaders check
    return "no model or adapter weights (adapter_model.safetensors, model.safetensors, ...)"


def _safetensors_problem(path: str) -> str | None:
    """A safetensors file must hold its 8-byte header length, its JSON header and every tensor byte it declares."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{name} is truncated ({size} bytes)"
            (header_length,) = struct.unpack("<Q", head)
            if header_length > size - 8:
                return f"{name} is truncated (header of {header_length} bytes in a {size}-byte file)"
            header = json.loads(f.read(header_length))
    except (OSError, ValueError) as error:
        return f"{name} is unreadable ({type(error).__name__}: {error})"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_length + end > size:
        return f"{name} is truncated ({size} bytes, its header needs {8 + header_length + end})"
    return None


def _torch_file_problem(path: str) -> str | None:
    """`torch.save` writes a zip archive whose directory sits at the end: a truncated file has none."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (OSError, zipfile.BadZipFile) as error:
        return f"{os.path.basename(path)} is unreadable or truncated ({error})"
    return None


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` under `output_dir` without a `checkpoint_problem`, or None.

    Every newer checkpoint that is skipped is logged with its problem, and so is an unfinished save (a
    `.partial-checkpoint-N` folder left by a job killed while saving).
    """
    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.startswith(STAGING_PREFIX) and os.path.isdir(path):
            logger.warning("Ignoring %s: a checkpoint save that did not finish (the job stopped while saving).", path)
        step = checkpoint_step(name)
        if step is not None and os.path.isdir(path):
            steps.append((step, path))
    for _, path in sorted(steps, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("Skipping checkpoint %s: %s.", path, problem)
    return None


def resolve_resume_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """Turn `--resume_from_checkpoint` (a path, `true`/`latest`, or nothing) into a complete checkpoint path or None.

    Raises:
        ValueError: an explicit path that is not a complete checkpoint, naming what is wrong with it.
    """
    if resume_from_checkpoint in (None, False, "", "false", "False"):
        return None
    if resume_from_checkpoint in (True, "true", "True", "latest"):
        found = last_complete_checkpoint(output_dir)
        if found is None:
            logger.warning(
                "resume_from_checkpoint=%s but no complete checkpoint in %s: starting fresh.",
                resume_from_checkpoint,
                output_dir,
            )
        else:
            logger.info("Resuming from %s, the newest complete checkpoint.", found)
        return found
    path = str(resume_from_checkpoint)
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(
            f"resume_from_checkpoint={path!r} is not a complete checkpoint: {problem}. Pass another checkpoint or "
            "`latest` (the newest complete one)."
        )
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------------------------------------


def write_manifest(folder: str, *, fingerprint: Mapping[str, Any], world_size: int, save_only_model: bool) -> None:
    """Write `sqllava_checkpoint.json` last into `folder`: every file (relative path -> size) and the fingerprint."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            full = os.path.join(root, name)
            if name != MANIFEST_NAME and not os.path.islink(full):
                files[os.path.relpath(full, folder)] = os.path.getsize(full)
    payload = {
        "format": 1,
        "world_size": world_size,
        "save_only_model": save_only_model,
        "fingerprint": dict(fingerprint),
        "files": dict(sorted(files.items())),
    }
    write_json_durably(os.path.join(folder, MANIFEST_NAME), payload)


def read_fingerprint(checkpoint: str) -> dict | None:
    """The run fingerprint stored with `checkpoint`, or None (a checkpoint written without one)."""
    path = os.path.join(checkpoint, MANIFEST_NAME)
    if not os.path.isfile(path):
        return None
    return _read_json(path).get("fingerprint")


def write_json_durably(path: str, payload: Any) -> None:
    """Write JSON to `path` through a temporary file, fsync'ed, then renamed: never a half-written file."""
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def fsync_directory(path: str) -> None:
    """Make a rename inside `path` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def rotate_checkpoints(output_dir: str, save_total_limit: int | None, keep: tuple[str, ...] = ()) -> list[str]:
    """Delete the oldest `checkpoint-N` folders beyond `save_total_limit`, never the newest nor those in `keep` (the
    best model's); returns the deleted paths. Runs after the new checkpoint is renamed into place, so at no moment is
    the last complete checkpoint gone."""
    import shutil

    if not save_total_limit or save_total_limit <= 0:
        return []
    found = sorted(
        (step, os.path.join(output_dir, name))
        for name in os.listdir(output_dir)
        if (step := checkpoint_step(name)) is not None and os.path.isdir(os.path.join(output_dir, name))
    )
    paths = [p for _, p in found]
    protected = {os.path.normpath(p) for p in keep if p} | ({os.path.normpath(paths[-1])} if paths else set())
    deleted = []
    remaining = len(paths)
    for path in paths:
        if remaining <= max(save_total_limit, len(protected)):
            break
        if os.path.normpath(path) not in protected:
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(path)
            remaining -= 1
    return deleted


# ----------------------------------------------------------------------------------------------------------------------
# Run fingerprint
# ----------------------------------------------------------------------------------------------------------------------


def file_signature(path: str) -> dict[str, Any]:
    """`{"size": bytes, "sha256_first_mib": hex}` of a file: cheap on a 1 GB JSON, and it changes when the data do
    (a file edited past its first MiB keeps its hash but almost always changes size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(_HASHED_BYTES))
    return {"size": os.path.getsize(path), "sha256_first_mib": digest.hexdigest()}


def run_fingerprint(*argument_groups: Any, data_files: list[str] | tuple[str, ...] = (), world_size: int = 1) -> dict:
    """What a run trains, as a JSON-able dict: its configuration, data files and model.

    Args:
        argument_groups: dataclasses (`ModelArguments`, `DataArguments`, `SQLlavaSFTConfig`, ...); their fields are
            merged, minus `FINGERPRINT_EXCLUDED_KEYS` / `FINGERPRINT_EXCLUDED_PREFIXES` (output paths, reporting,
            data-loading workers, the resume switches themselves).
        data_files: local data files (JSON) or dataset folders; each file gets its size and the SHA-256 of its
            first MiB (a folder: every file in it, up to 200).
        world_size: number of processes (with the per-device batch size, it makes the global batch).
    """
    config: dict[str, Any] = {}
    for group in argument_groups:
        if group is None:
            continue
        values = group.to_dict() if hasattr(group, "to_dict") else dataclasses.asdict(group)
        for key, value in values.items():
            if key in FINGERPRINT_EXCLUDED_KEYS or key.startswith(FINGERPRINT_EXCLUDED_PREFIXES) or key.startswith("_"):
                continue
            config[key] = value
    files: dict[str, Any] = {}
    for path in data_files:
        if os.path.isfile(path):
            files[path] = file_signature(path)
        elif os.path.isdir(path):
            found = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
            for file in found[:200]:
                files[file] = file_signature(file)
        else:
            files[path] = "not a local file (a Hub dataset): compared by name"
    # A JSON round trip makes the stored and the freshly computed fingerprints comparable (tuples, enums, paths).
    return json.loads(json.dumps({"config": config, "data_files": files, "world_size": world_size}, default=str))


def fingerprint_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between a checkpoint's fingerprint and the current run's, e.g.
    `learning_rate: 2e-05 in the checkpoint, 0.001 now`."""
    differences = []
    saved_config, current_config = saved.get("config", {}), current.get("config", {})
    for key in sorted(set(saved_config) | set(current_config)):
        before, now = saved_config.get(key, "<unset>"), current_config.get(key, "<unset>")
        if before != now:
            differences.append(f"{key}: {before!r} in the checkpoint, {now!r} now")
    saved_files, current_files = saved.get("data_files", {}), current.get("data_files", {})
    for path in sorted(set(saved_files) | set(current_files)):
        before, now = saved_files.get(path), current_files.get(path)
        if before is None:
            differences.append(f"data file {path}: not in the checkpoint's run, used now")
        elif now is None:
            differences.append(f"data file {path}: used by the checkpoint's run, not now")
        elif before != now:
            differences.append(f"data file {path}: {_signature_text(before)} in the checkpoint, {_signature_text(now)} now")
    if saved.get("world_size") != current.get("world_size"):
        differences.append(f"processes: {saved.get('world_size')} in the checkpoint, {current.get('world_size')} now")
    return differences


def _signature_text(signature: Any) -> str:
    if isinstance(signature, Mapping):
        return f"{signature.get('size')} bytes, sha256 of the first MiB {str(signature.get('sha256_first_mib'))[:12]}"
    return str(signature)


__all__ = [
    "MANIFEST_NAME",
    "checkpoint_problem",
    "fingerprint_differences",
    "last_complete_checkpoint",
    "read_fingerprint",
    "resolve_resume_checkpoint",
    "rotate_checkpoints",
    "run_fingerprint",
    "write_manifest",
]
