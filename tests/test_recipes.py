"""The two training stages end to end on the tiny towers: configs, what each stage trains, resume, multi-process."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

pytest.importorskip("trl")
pytest.importorskip("peft")

from tests.conftest import REPO_ROOT

CONFIGS = sorted(glob.glob(str(REPO_ROOT / "recipes" / "configs" / "*" / "*.yaml")))
ACCELERATE_CONFIGS = sorted(glob.glob(str(REPO_ROOT / "recipes" / "accelerate" / "*.yaml")))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Synthetic data + the two tiny towers saved as local checkpoints (as `recipes/run_tiny.py` makes them)."""
    from recipes.run_tiny import SHAPES_IMAGE_SIZE, build_tiny_towers
    from recipes.synthetic import generate_shapes_dataset

    root = tmp_path_factory.mktemp("tiny")
    data = generate_shapes_dataset(root / "data", num_train=48, num_eval=8, seed=0, image_size=SHAPES_IMAGE_SIZE)
    towers = build_tiny_towers(str(root / "towers"), data, seed=0, lm_steps=2)
    return {"root": root, "data": data, "towers": towers}


def _stage_args(script, config: str, **overrides):
    argv = ["--config", str(REPO_ROOT / "recipes" / "configs" / "tiny" / config)]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    return script.parse_args(argv)


def _pretrain(workdir, output_dir, **overrides):
    from recipes import pretrain

    args = _stage_args(
        pretrain,
        "pretrain.yaml",
        vision_tower_name_or_path=workdir["towers"]["vision"],
        text_model_name_or_path=workdir["towers"]["text"],
        data_path=workdir["data"]["pretrain"],
        image_folder=workdir["data"]["image_folder"],
        output_dir=output_dir,
        report_to="none",
        **overrides,
    )
    return pretrain.main(*args)


@pytest.fixture(scope="module")
def stage1_dir(workdir):
    out = str(workdir["root"] / "stage1")
    _pretrain(workdir, out, max_steps=2, per_device_train_batch_size=4)
    return out


def _finetune(workdir, stage1_dir, output_dir, **overrides):
    from recipes import finetune

    args = _stage_args(
        finetune,
        "finetune.yaml",
        **{
            "model_name_or_path": stage1_dir,
            "data_path": workdir["data"]["finetune"],
            "image_folder": workdir["data"]["image_folder"],
            "output_dir": output_dir,
            "export_dir": "",
            "report_to": "none",
            **overrides,
        },
    )
    return finetune.main(*args)


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
@pytest.mark.parametrize("size", ["7b", "13b"])
def test_vit_lora_dropout_is_the_authors_in_both_stages(size, stage, tiny_tokenizer):
    """The authors build the ViT-LoRA with lora_dropout=0.2 whatever the stage (train.py:1165-1172, hard-coded):
    the recipe's value reaches every ViT-LoRA layer the stage adds (here on the tiny towers)."""
    from recipes import finetune, pretrain
    from recipes.tiny import build_tiny_model

    config = str(REPO_ROOT / "recipes" / "configs" / f"sqllava-{size}" / f"{stage}.yaml")
    script = pretrain if stage == "pretrain" else finetune
    model_args = script.parse_args(["--config", config, "--bf16", "false", "--tf32", "false"])[0]
    assert model_args.vision_lora_dropout == 0.2
    model = build_tiny_model(tiny_tokenizer)
    if stage == "pretrain":
        model, _ = pretrain.prepare_stage1_trainables(model, model_args)
    else:
        model = finetune.add_stage2_adapters(model, model_args)
    dropouts = [
        module.lora_dropout[adapter]
        for name, module in model.named_modules()
        if ".vision_tower." in name and hasattr(module, "lora_dropout")
        for adapter in module.lora_dropout
    ]
    assert dropouts and all(isinstance(d, torch.nn.Dropout) and d.p == 0.2 for d in dropouts)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: os.path.relpath(p, REPO_ROOT / "recipes" / "configs"))
def test_every_recipe_yaml_parses_into_the_dataclasses(config):
    from recipes import finetune, pretrain

    script = pretrain if os.path.basename(config) == "pretrain.yaml" else finetune
    with open(config) as f:
        raw = yaml.safe_load(f)
    # The GPU recipes ask for bf16/tf32, which TrainingArguments refuses on a CPU-only machine: parse them as a GPU
    # machine would, with only those two switched off here.
    cpu = ["--bf16", "false", "--tf32", "false"] if raw.get("bf16") else []
    model_args, data_args, training_args, *_ = script.parse_args(["--config", config, *cpu])
    assert training_args.stage == raw["stage"]
    assert training_args.learning_rate == pytest.approx(float(raw["learning_rate"]))
    assert data_args.data_path == raw["data_path"]
    if "vision_lora_r" in raw:
        assert model_args.vision_lora_r == raw["vision_lora_r"]


def test_unknown_yaml_key_is_rejected(tmp_path):
    from recipes import finetune

    bad = tmp_path / "bad.yaml"
    bad.write_text("data_path: [x.json]\nstage: finetune\nlearning_rat: 1.0e-4\n")
    with pytest.raises(ValueError, match="learning_rat"):
        finetune.parse_args(["--config", str(bad)])


def test_abbreviated_flags_are_errors_not_other_flags():
    """`--learning_rat 1e-3` was silently taken as `--learning_rate` (argparse's prefix matching)."""
    from recipes import finetune, pretrain

    tiny = str(REPO_ROOT / "recipes" / "configs" / "tiny" / "finetune.yaml")
    for script, config in ((finetune, tiny), (pretrain, tiny.replace("finetune", "pretrain"))):
        with pytest.raises(ValueError, match=r"not used by the HfArgumentParser: \['--learning_rat', '1e-3'\]"):
            script.parse_args(["--config", config, "--learning_rat", "1e-3"])
    _, _, training_args, _ = finetune.parse_args(["--config", tiny, "--learning_rate", "1e-3"])
    assert training_args.learning_rate == 1e-3


@pytest.mark.parametrize("script", ["pretrain", "finetune"])
def test_a_bare_launch_points_at_the_recipe_configs(script):
    import importlib

    module = importlib.import_module(f"recipes.{script}")
    with pytest.raises(SystemExit, match=rf"--config recipes/configs/sqllava-7b/{script}.yaml"):
        module.parse_args([])
    with pytest.raises(ValueError, match=r"No training data: pass a recipe with --config"):
        module.parse_args(["--learning_rate", "1e-3"])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: os.path.relpath(p, REPO_ROOT / "recipes" / "configs"))
def test_recipe_yamls_parse_without_deprecation_warnings(config, recwarn):
    """transformers 5 renamed `gradient_checkpointing` to `activation_checkpointing` and warned on every run (TRL's
    default and the YAMLs set the old name); the recipes say it once, in the name of the installed version."""
    import warnings

    from recipes import finetune, pretrain

    script = pretrain if os.path.basename(config) == "pretrain.yaml" else finetune
    with open(config) as f:
        raw = yaml.safe_load(f)
    cpu = ["--bf16", "false", "--tf32", "false"] if raw.get("bf16") else []
    warnings.simplefilter("always")
    _, _, training_args, *_ = script.parse_args(["--config", config, *cpu])
    deprecations = [str(w.message) for w in recwarn if "checkpointing" in str(w.message)]
    assert not deprecations, deprecations
    assert training_args.gradient_checkpointing == raw["activation_checkpointing"]
    assert training_args.activation_checkpointing == raw["activation_checkpointing"]
    if "activation_checkpointing_kwargs" in raw:
        assert training_args.gradient_checkpointing_kwargs == raw["activation_checkpointing_kwargs"]


def test_building_the_stage2_model_warns_about_no_deprecated_name(stage1_dir, recwarn):
    """PEFT reads `is_gradient_checkpointing`, which transformers 5 warns about at every read (every run)."""
    import warnings

    from recipes import finetune

    warnings.simplefilter("always")
    model_args, *_ = finetune.parse_args(
        [
            "--config",
            str(REPO_ROOT / "recipes" / "configs" / "tiny" / "finetune.yaml"),
            "--model_name_or_path",
            stage1_dir,
        ]
    )
    finetune.build_stage2_model(model_args)
    assert not [str(w.message) for w in recwarn if "checkpointing" in str(w.message)]


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=os.path.basename)
def test_accelerate_configs_parse(config):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(config)
    assert cfg.num_processes >= 1
    assert cfg.distributed_type is not None


def test_stage1_trains_only_the_projector_and_vit_lora(workdir, stage1_dir):
    """Parameter diff: the LLM is untouched, the projector changed, and in the vision tower only the LoRA-adapted
    linear weights changed (ViT-LoRA merged), never biases, norms or embeddings."""
    from transformers import CLIPVisionModel, LlamaForCausalLM

    from modeling_sqllava import SQLlavaForConditionalGeneration

    trained = SQLlavaForConditionalGeneration.from_pretrained(stage1_dir)
    llama = LlamaForCausalLM.from_pretrained(workdir["towers"]["text"])
    clip = CLIPVisionModel.from_pretrained(workdir["towers"]["vision"])

    n = llama.config.vocab_size  # the original rows; the rows added for <image>/<pad> are new
    lm = trained.model.language_model.state_dict()
    for name, tensor in llama.model.state_dict().items():
        assert torch.equal(lm[name][:n] if name == "embed_tokens.weight" else lm[name], tensor), name
    assert torch.equal(trained.lm_head.weight[:n], llama.lm_head.weight)

    clip_state = {k.removeprefix("vision_model."): v for k, v in clip.state_dict().items()}
    lora_targets = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight", "fc1.weight", "fc2.weight")
    changed_lora = 0
    for name, tensor in trained.model.vision_tower.state_dict().items():
        if name.endswith(lora_targets):
            changed_lora += int(not torch.equal(tensor, clip_state[name]))
        else:
            assert torch.equal(tensor, clip_state[name]), f"{name} changed in stage 1"
    assert changed_lora > 0, "ViT-LoRA was not merged into the vision tower"

    # The projector trained: every tensor moved away from its initial value (rebuilt with the run's seed).
    from transformers import set_seed

    from recipes import pretrain

    model_args, _, training_args = pretrain.parse_args(
        [
            "--config",
            str(REPO_ROOT / "recipes" / "configs" / "tiny" / "pretrain.yaml"),
            "--vision_tower_name_or_path",
            workdir["towers"]["vision"],
            "--text_model_name_or_path",
            workdir["towers"]["text"],
            "--data_path",
            workdir["data"]["pretrain"],
        ]
    )
    set_seed(training_args.seed)
    initial, _ = pretrain.build_stage1_model(model_args)
    initial = initial.model.multi_modal_projector.state_dict()
    for name, tensor in trained.model.multi_modal_projector.state_dict().items():
        assert not torch.equal(tensor, initial[name]), f"stage 1 did not train projector tensor {name}"


def test_stage2_saves_adapter_and_exports_a_loadable_model(workdir, stage1_dir, tmp_path):
    out = _finetune(
        workdir,
        stage1_dir,
        str(tmp_path / "stage2"),
        max_steps=2,
        per_device_train_batch_size=4,
        export_dir=str(tmp_path / "merged"),
    )
    assert os.path.isfile(os.path.join(out["adapter"], "adapter_model.safetensors"))
    with open(os.path.join(out["adapter"], "adapter_config.json")) as f:
        adapter_config = json.load(f)
    assert "multi_modal_projector" in adapter_config["modules_to_save"]
    merged = out["merged"]
    assert os.path.isfile(os.path.join(merged, "config.json"))
    assert not glob.glob(os.path.join(merged, "*.bin")), "export must be safetensors-only"


def _losses(output_dir: str) -> list[float]:
    states = sorted(
        glob.glob(os.path.join(output_dir, "**", "trainer_state.json"), recursive=True), key=os.path.getmtime
    )
    with open(states[-1]) as f:
        history = json.load(f)["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


# Run in a subprocess: the job is killed (SIGKILL) while it writes trainer_state.json of checkpoint-4, after the
# weights, optimizer, scheduler and RNG states: the moment a non-atomic save leaves a folder that looks finished.
_KILLED_DURING_SAVE = r"""
import os, signal, sys
from transformers.trainer_callback import TrainerState

save_to_json = TrainerState.save_to_json


def save_then_die(self, path):
    if self.global_step == 4:
        with open(path, "w") as f:
            f.write('{"global_step": 4, "log_hist')
        os.kill(os.getpid(), signal.SIGKILL)
    save_to_json(self, path)


TrainerState.save_to_json = save_then_die
from recipes import finetune

finetune.main(*finetune.parse_args(sys.argv[1:]))
"""


def test_resume_after_a_kill_during_a_checkpoint_save_reproduces_the_uninterrupted_run(workdir, stage1_dir, tmp_path):
    """4 steps in one go == a job killed (kill -9) while saving checkpoint-4, then resumed with `latest`: the
    interrupted save is not taken for a checkpoint (it was, and the resume crashed on its half-written state), the
    run resumes from checkpoint-2 with the same data, vuser draws and losses."""
    common = {
        "max_steps": 4, "per_device_train_batch_size": 4, "logging_steps": 1, "save_strategy": "steps",
        "save_steps": 2, "sq_ratio": 0.5,
    }  # fmt: skip
    full = tmp_path / "full"
    _finetune(workdir, stage1_dir, str(full), **common)
    part = tmp_path / "part"
    argv = ["--config", str(REPO_ROOT / "recipes" / "configs" / "tiny" / "finetune.yaml")]
    overrides = {
        "model_name_or_path": stage1_dir,
        "data_path": workdir["data"]["finetune"],
        "image_folder": workdir["data"]["image_folder"],
        "output_dir": str(part),
        "export_dir": "",
        "report_to": "none",
        **common,
    }
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", _KILLED_DURING_SAVE, *argv]
    run = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == -9, run.stderr[-3000:]
    assert not (part / "checkpoint-4").exists(), "the interrupted save must not look like a checkpoint"
    assert (part / ".partial-checkpoint-4").is_dir() and (part / "checkpoint-2" / "sqllava_checkpoint.json").is_file()
    # A half-written checkpoint of another kind must be ignored too.
    (part / "checkpoint-6").mkdir()
    (part / "checkpoint-6" / "model.safetensors").write_bytes(b"partial")
    _finetune(workdir, stage1_dir, str(part), resume_from_checkpoint="latest", **common)

    with open(full / "checkpoint-4" / "trainer_state.json") as f:
        full_losses = [e["loss"] for e in json.load(f)["log_history"] if "loss" in e]
    with open(part / "checkpoint-4" / "trainer_state.json") as f:
        resumed_losses = [e["loss"] for e in json.load(f)["log_history"] if "loss" in e]
    assert len(full_losses) == 4
    assert resumed_losses == pytest.approx(full_losses, rel=1e-5)


def test_resuming_a_different_run_fails_and_lists_the_differences(workdir, stage1_dir, tmp_path):
    """The fingerprint stored with each checkpoint (configuration minus output paths, data files, model) must match
    the resumed run: a changed learning rate or data file is refused with the differences listed (before, it was
    logged and the old schedule trained, or the run went on with other data), unless --allow_resume_changes."""
    import shutil

    data = tmp_path / "finetune.json"
    shutil.copy(workdir["data"]["finetune"], data)
    common = {"max_steps": 2, "per_device_train_batch_size": 4, "save_strategy": "steps", "save_steps": 2}
    out = tmp_path / "run"
    _finetune(workdir, stage1_dir, str(out), data_path=str(data), **common)
    with pytest.raises(ValueError, match=r"(?s)different run:.*learning_rate: 0.002 in the checkpoint, 0.001 now"):
        _finetune(workdir, stage1_dir, str(out), data_path=str(data), learning_rate=1e-3,
                  resume_from_checkpoint="latest", **common)  # fmt: skip
    records = json.loads(data.read_text())
    data.write_text(json.dumps(records[:-1]))
    with pytest.raises(ValueError, match=r"data file .*finetune.json: \d+ bytes.* in the checkpoint, \d+ bytes"):
        _finetune(workdir, stage1_dir, str(out), data_path=str(data), resume_from_checkpoint="latest", **common)
    # Allowed explicitly, it resumes (here at the last step: nothing left to train).
    _finetune(workdir, stage1_dir, str(out), data_path=str(data), resume_from_checkpoint="latest",
              allow_resume_changes=True, **common)  # fmt: skip


def _complete_checkpoint(folder, step: int) -> None:
    """The files Trainer writes for a LoRA run, small but real: JSON state, safetensors adapter, torch zip files."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    save_file({"lora_A": torch.ones(64, 8)}, str(folder / "adapter_model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.zeros(64)}}, "param_groups": []}, folder / "optimizer.pt")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    torch.save({"python": [1, 2, 3]}, folder / "rng_state.pth")


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_latest_is_the_newest_complete_and_readable_checkpoint(tmp_path, caplog):
    from recipes.checkpoints import last_complete_checkpoint, resolve_resume_checkpoint, write_manifest

    for step in range(2, 11):
        _complete_checkpoint(tmp_path / f"checkpoint-{step}", step)
    broken = {
        3: "trainer_state.json is unreadable",
        5: "optimizer.pt is unreadable or truncated",
        6: "no optimizer.pt",
        7: "adapter_model.safetensors is truncated",
        8: "trainer_state.json is unreadable",
        9: "no trainer_state.json",
        10: "adapter_model.safetensors has",
    }
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text('{"global_step": 3, "log_hist')
    _truncate(tmp_path / "checkpoint-5" / "optimizer.pt")
    (tmp_path / "checkpoint-6" / "optimizer.pt").unlink()
    _truncate(tmp_path / "checkpoint-7" / "adapter_model.safetensors", keep=0.9)
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text("")
    (tmp_path / "checkpoint-9" / "trainer_state.json").unlink()
    write_manifest(str(tmp_path / "checkpoint-10"), fingerprint={}, world_size=1, save_only_model=False)
    (tmp_path / "checkpoint-10" / "adapter_model.safetensors").write_bytes(b"\0" * 300)  # changed after the save
    (tmp_path / ".partial-checkpoint-11").mkdir()
    with caplog.at_level("WARNING", logger="recipes.checkpoints"):
        assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")
    for step, reason in broken.items():
        if step > 4:
            assert f"checkpoint-{step}: {reason}" in caplog.text, step
    assert ".partial-checkpoint-11: a checkpoint save that did not finish" in caplog.text
    assert resolve_resume_checkpoint("latest", str(tmp_path)) == str(tmp_path / "checkpoint-4")
    for step, reason in broken.items():
        with pytest.raises(ValueError, match=f"checkpoint-{step}.*not a complete checkpoint: {reason}"):
            resolve_resume_checkpoint(str(tmp_path / f"checkpoint-{step}"), str(tmp_path))


def test_empty_gathered_tensors_fail_loudly():
    """The ZeRO-3/FSDP failure mode (sharded weights saved as size-0 tensors) is caught before anything is written."""
    from recipes.common import check_full_tensors

    check_full_tensors({"a": torch.ones(2, 2)})
    with pytest.raises(RuntimeError, match="empty"):
        check_full_tensors({"a": torch.ones(2), "model.multi_modal_projector.linear_1.weight": torch.empty(0)})


@pytest.mark.slow
def test_two_processes_match_one_process_with_accumulation(workdir, stage1_dir, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo) == 1 process with gradient accumulation 2 (same global batch);
    the two ranks see different samples. Every fourth record's image is corrupt: dropped by the collator on whichever
    rank draws it, and the one `skipped_samples.json` of each run counts the same drops (the ranks' counts gathered;
    they used to go to one file per rank, and to nowhere from dataloader workers)."""
    image_folder = workdir["data"]["image_folder"]
    with open(os.path.join(image_folder, "corrupt_for_ranks.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n cut short")
    with open(workdir["data"]["finetune"]) as f:
        records = json.load(f)
    for i in range(3, len(records), 4):
        records[i]["image"] = "corrupt_for_ranks.png"
    data = tmp_path / "finetune_with_corrupt_images.json"
    data.write_text(json.dumps(records))
    common = [
        "--max_steps",
        "3",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--sq_ratio",
        "0.5",
        "--save_strategy",
        "steps",
        "--save_steps",
        "3",
        "--model_name_or_path",
        stage1_dir,
        "--data_path",
        str(data),
        "--image_folder",
        image_folder,
        "--export_dir",
        "",
        "--group_by_modality_length",
        "false",
        "--dataloader_drop_last",
        "true",
        "--log_sample_ids",
        "true",
        "--max_skip_fraction",
        "1.0",
        "--dataloader_num_workers",
        "1",
    ]
    config = str(REPO_ROOT / "recipes" / "configs" / "tiny" / "finetune.yaml")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
    }
    two = tmp_path / "two"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(REPO_ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"),
            "--main_process_port",
            "29517",
            str(REPO_ROOT / "recipes" / "finetune.py"),
            "--config",
            config,
            "--output_dir",
            str(two),
            "--per_device_train_batch_size",
            "2",
            "--gradient_accumulation_steps",
            "1",
            *common,
        ],
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    one = tmp_path / "one"
    subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "recipes" / "finetune.py"),
            "--config",
            config,
            "--output_dir",
            str(one),
            "--per_device_train_batch_size",
            "2",
            "--gradient_accumulation_steps",
            "2",
            *common,
        ],
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert _losses(str(two)) == pytest.approx(_losses(str(one)), rel=2e-3)
    seen = {}
    for path in glob.glob(str(two / "sample_ids_rank*.json")):
        with open(path) as f:
            seen[os.path.basename(path)] = set(json.load(f))
    assert len(seen) == 2, f"expected one sample-id log per rank, got {sorted(seen)}"
    rank0, rank1 = seen.values()
    assert rank0 and rank1 and not rank0 & rank1, "the two ranks must see different samples"
    reports = [json.loads((run / "skipped_samples.json").read_text()) for run in (two, one)]
    assert reports[0]["counts"] == reports[1]["counts"] and reports[0]["counts"].get("unreadable_image", 0) > 0
    assert reports[0]["collate"]["seen"] == reports[1]["collate"]["seen"] == 3 * 4
    assert not list(two.glob("skipped_samples.rank*.json"))


def test_every_command_line_parser_refuses_abbreviations():
    """Every `ArgumentParser` / `TrlParser` of the repository is built with `allow_abbrev=False` (argparse's default
    takes `--learning_rat` for `--learning_rate` and `--num-q` for `--num-questions`)."""
    import ast

    offenders, found = [], 0
    for folder in ("recipes", "hub_upload", "benchmarks", "processing", "modeling_sqllava"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if not isinstance(node, ast.Call):
                    continue
                name = getattr(node.func, "attr", getattr(node.func, "id", None))
                if name not in ("ArgumentParser", "TrlParser", "HfArgumentParser"):
                    continue
                found += 1
                keywords = {k.arg: k.value for k in node.keywords}
                value = keywords.get("allow_abbrev")
                if not (isinstance(value, ast.Constant) and value.value is False):
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert found >= 10 and not offenders, offenders
