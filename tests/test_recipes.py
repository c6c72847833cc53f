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


def test_resume_reproduces_the_uninterrupted_run(workdir, stage1_dir, tmp_path):
    """4 steps in one go == 2 steps, a checkpoint, and a resumed run to step 4: same data, same vuser draws, same losses."""
    common = dict(
        max_steps=4, per_device_train_batch_size=4, logging_steps=1, save_strategy="steps", save_steps=2, sq_ratio=0.5
    )
    full = tmp_path / "full"
    _finetune(workdir, stage1_dir, str(full), **common)
    part = tmp_path / "part"
    _finetune(workdir, stage1_dir, str(part), **common)
    # Simulate a job killed after step 2: drop the later checkpoint, plus a half-written one that must be ignored.
    import shutil

    shutil.rmtree(part / "checkpoint-4")
    (part / "checkpoint-6").mkdir()
    (part / "checkpoint-6" / "model.safetensors").write_bytes(b"partial")
    _finetune(workdir, stage1_dir, str(part), resume_from_checkpoint="latest", **common)

    with open(full / "checkpoint-4" / "trainer_state.json") as f:
        full_losses = [e["loss"] for e in json.load(f)["log_history"] if "loss" in e]
    with open(part / "checkpoint-4" / "trainer_state.json") as f:
        resumed_losses = [e["loss"] for e in json.load(f)["log_history"] if "loss" in e]
    assert len(full_losses) == 4
    assert resumed_losses == pytest.approx(full_losses, rel=1e-5)


def test_last_complete_checkpoint_skips_interrupted_saves(tmp_path):
    from recipes.common import last_complete_checkpoint, resolve_resume_checkpoint

    for step, complete in [(2, True), (4, True), (6, False)]:
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert resolve_resume_checkpoint("latest", str(tmp_path)) == str(tmp_path / "checkpoint-4")
    with pytest.raises(ValueError, match="checkpoint-6"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-6"), str(tmp_path))


def test_empty_gathered_tensors_fail_loudly():
    """The ZeRO-3/FSDP failure mode (sharded weights saved as size-0 tensors) is caught before anything is written."""
    from recipes.common import check_full_tensors

    check_full_tensors({"a": torch.ones(2, 2)})
    with pytest.raises(RuntimeError, match="empty"):
        check_full_tensors({"a": torch.ones(2), "model.multi_modal_projector.linear_1.weight": torch.empty(0)})


@pytest.mark.slow
def test_two_processes_match_one_process_with_accumulation(workdir, stage1_dir, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo) == 1 process with gradient accumulation 2 (same global batch);
    the two ranks see different samples."""
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
        workdir["data"]["finetune"],
        "--image_folder",
        workdir["data"]["image_folder"],
        "--export_dir",
        "",
        "--group_by_modality_length",
        "false",
        "--dataloader_drop_last",
        "true",
        "--log_sample_ids",
        "true",
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
