"""Hub export (hub_upload/export.py): merging LLM-LoRA + ViT-LoRA + projector, the folder layout, verification.

The training output is built as recipes/finetune.py saves it: a stage-1 folder (model + processor) and one PEFT
adapter over both towers (LLM and ViT ranks differ through rank/alpha patterns) with the projector in
`modules_to_save`. LoRA B matrices and the projector copy are randomised so that every part changes the logits.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from hub_upload.export import (
    MODEL_AUTO_MAP,
    ExportVerificationError,
    compute_logits,
    export_model,
    fixed_verification_inputs,
    main,
    relative_logit_error,
    verify_export_folder,
)

from tests.conftest import other_transformers_python  # noqa: E402

peft = pytest.importorskip("peft")
torch.set_num_threads(1)

OTHER_PYTHON = other_transformers_python()
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@pytest.fixture(scope="module")
def training_output(tmp_path_factory, tiny_tokenizer):
    """(stage-1 folder, adapter folder) as recipes/pretrain.py and recipes/finetune.py write them."""
    from peft import get_peft_model

    from recipes.common import ModelArguments, build_lora_config
    from recipes.tiny import build_tiny_model, build_tiny_processor

    root = tmp_path_factory.mktemp("training-output")
    base, adapter = root / "stage1", root / "stage2"
    processor = build_tiny_processor(tiny_tokenizer)
    model = build_tiny_model(tiny_tokenizer)
    model.save_pretrained(base)
    processor.save_pretrained(base)

    args = ModelArguments(lora_r=4, lora_alpha=8, vision_lora_r=2, vision_lora_alpha=6)
    peft_model = get_peft_model(model, build_lora_config(args, modules_to_save=["multi_modal_projector"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    peft_model.eval()
    peft_model.save_pretrained(adapter)
    processor.save_pretrained(adapter)
    return {"base": base, "adapter": adapter, "peft_model": peft_model}


@pytest.fixture(scope="module")
def float32_export(training_output, tmp_path_factory):
    output = tmp_path_factory.mktemp("export") / "sqllava-tiny-hf"
    report = export_model(
        base_model=str(training_output["base"]),
        adapter=str(training_output["adapter"]),
        output_dir=str(output),
        dtype="float32",
        repo_id="tester/sqllava-tiny",
        training_config={"learning_rate": 2e-4, "lora_r": 4, "hub_token": "hf_secret_value", "report_to": ["none"]},
        train_metrics={"train_runtime": 7200.0, "train_loss": 1.25, "tokens_per_second": 1234.5},
        eval_results={"shapes-vqa": {"accuracy": 0.5}},
        base_model_id_for_card=["lmsys/vicuna-7b-v1.5", "openai/clip-vit-large-patch14-336"],
        datasets=["liuhaotian/LLaVA-Instruct-150K"],
    )
    return output, report


def test_export_merges_every_lora_and_reproduces_the_unmerged_model(float32_export, training_output):
    """Both towers' adapters are merged, the fresh-process reload passes, and in-process logits match too."""
    from modeling_sqllava import SQLlavaForConditionalGeneration

    output, report = float32_export
    assert report["verified"] and report["max_relative_error"] < report["tolerance"] == 1e-4
    assert report["lora_layers"]["vision_tower"] == 2 * 6 and report["lora_layers"]["language_model"] == 2 * 7
    assert report["loaded_with"]["model_class"] == "SQLlavaForConditionalGeneration"

    exported = SQLlavaForConditionalGeneration.from_pretrained(output, dtype=torch.float32).eval()
    peft_model = training_output["peft_model"]
    inputs = fixed_verification_inputs(exported.config)
    unmerged = compute_logits(peft_model, inputs)
    merged = compute_logits(exported, inputs)
    assert (merged - unmerged).abs().max() / unmerged.abs().max() < 1e-4

    # The ViT-LoRA is in the exported tower: W + (alpha / r) B A, written here from the adapter weights.
    name = "model.vision_tower.encoder.layers.1.mlp.fc1"
    lora_layer = peft_model.get_submodule(f"base_model.model.{name}")
    lora_a, lora_b = lora_layer.lora_A["default"].weight, lora_layer.lora_B["default"].weight
    expected = lora_layer.base_layer.weight + (6 / 2) * lora_b @ lora_a
    torch.testing.assert_close(exported.get_submodule(name).weight, expected, rtol=1e-5, atol=1e-6)
    assert (lora_b @ lora_a).abs().max() > 1e-3  # the adapter is not a no-op
    # The trained projector (modules_to_save) replaced the stage-1 one.
    trained = peft_model.base_model.model.model.multi_modal_projector.modules_to_save["default"]
    torch.testing.assert_close(exported.model.multi_modal_projector.linear_2.weight, trained.linear_2.weight)


def test_export_folder_is_hub_ready(float32_export):
    """Safetensors only, flat code files, complete auto_maps, processor + chat template, generation config, card."""
    from huggingface_hub import ModelCard

    output, report = float32_export
    files = set(report["files"])
    assert not [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    assert any(f.endswith(".safetensors") for f in files)
    assert {"configuration_sqllava.py", "modeling_sqllava.py", "processing_sqllava.py"} <= files
    assert {"config.json", "generation_config.json", "processor_config.json", "README.md"} <= files
    assert "chat_template.jinja" in files or "chat_template.json" in files
    assert {"tokenizer.json", "tokenizer_config.json"} <= files

    config = json.loads((output / "config.json").read_text())
    assert config["auto_map"] == MODEL_AUTO_MAP
    processor_config = json.loads((output / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_sqllava.SQLlavaProcessor"
    generation = json.loads((output / "generation_config.json").read_text())
    assert generation["pad_token_id"] == config["pad_token_id"]

    card = ModelCard.load(output / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-text-to-text"
    assert card.data.base_model == ["lmsys/vicuna-7b-v1.5", "openai/clip-vit-large-patch14-336"]
    assert card.data.license == "llama2" and card.data.datasets == ["liuhaotian/LLaVA-Instruct-150K"]
    text = card.text
    assert "tester/sqllava-tiny" in text and "AutoModelForVision2Seq" in text and "AutoModelForImageTextToText" in text
    assert "learning_rate" in text and "hf_secret_value" not in text and "<redacted>" in text
    assert "Training time (hours) | 2" in text and "1234.5" in text  # measured figures
    assert "shapes-vqa" in text


def test_logit_error_is_relative_to_the_largest_reference_logit_and_checks_shapes():
    reference = torch.tensor([[[4.0, -2.0, 0.0]]])
    assert relative_logit_error(reference + torch.tensor([0.0, 0.1, 0.0]), reference) == pytest.approx((0.025, 0.1))
    with pytest.raises(ExportVerificationError, match="shape"):
        relative_logit_error(torch.zeros(1, 2, 3), reference)


def test_bfloat16_export_is_sharded_and_within_tolerance(training_output, tmp_path):
    """bf16 export: several safetensors shards + index, bf16 weights, verified at the bf16 tolerance."""
    from safetensors import safe_open

    output = tmp_path / "bf16"
    report = export_model(
        base_model=str(training_output["base"]), adapter=str(training_output["adapter"]), output_dir=str(output),
        dtype="bfloat16", max_shard_size="200KB",
    )  # fmt: skip
    shards = sorted(output.glob("model-*.safetensors"))
    assert len(shards) > 1 and (output / "model.safetensors.index.json").is_file()
    with safe_open(str(shards[0]), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}  # noqa: SIM118 (safe_open is not iterable)
    assert report["verified"] and report["max_relative_error"] < report["tolerance"] == 3e-2
    assert report["native_relative_error"] < report["native_tolerance"]
    assert not [f for f in report["files"] if f.endswith(PICKLE_SUFFIXES)]


def test_verification_catches_a_corrupted_export(training_output, tmp_path):
    """Verification compares against the unmerged model: an export missing the adapter fails it."""
    from modeling_sqllava import SQLlavaForConditionalGeneration

    output = tmp_path / "plain"
    # The stage-1 model without the adapter, checked against the adapted model's logits.
    main(
        [
            "--base-model",
            str(training_output["base"]),
            "--output-dir",
            str(output),
            "--dtype",
            "float32",
            "--no-verify",
        ]
    )
    model = SQLlavaForConditionalGeneration.from_pretrained(output).eval()
    inputs = fixed_verification_inputs(model.config)
    reference = compute_logits(training_output["peft_model"], inputs)
    with pytest.raises(ExportVerificationError, match="max relative logit error"):
        verify_export_folder(output, inputs, reference, dtype="float32")


def test_bad_arguments_are_named(training_output, tmp_path):
    with pytest.raises(ValueError, match="'float8'"):
        export_model(base_model=str(training_output["base"]), output_dir=str(tmp_path / "x"), dtype="float8")
    with pytest.raises(ValueError, match="adapter_config.json"):
        export_model(base_model=str(training_output["base"]), adapter=str(tmp_path), output_dir=str(tmp_path / "y"))


@pytest.mark.slow
@pytest.mark.skipif(OTHER_PYTHON is None, reason="no other transformers environment; set SQLLAVA_OTHER_PYTHON")
def test_export_loads_with_remote_code_under_transformers_4(float32_export, training_output):
    """The folder written here (transformers 5.x) loads with trust_remote_code under 4.57 with the same logits."""
    from modeling_sqllava import SQLlavaConfig

    output, _ = float32_export
    inputs = fixed_verification_inputs(SQLlavaConfig.from_pretrained(output))
    reference = compute_logits(training_output["peft_model"], inputs)
    report = verify_export_folder(output, inputs, reference, dtype="float32", python_executable=OTHER_PYTHON)
    assert report["loaded_with"]["transformers"].startswith("4.57")
    assert report["max_relative_error"] < 1e-4


def test_fresh_process_cannot_import_the_repository(float32_export):
    """The verification subprocess runs with `-I` outside the repo: `import modeling_sqllava` must fail there."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", "import modeling_sqllava"],
        cwd=float32_export[0],
        env=env,
        capture_output=True,
        check=False,
    )
    if result.returncode == 0:
        pytest.skip("modeling_sqllava is installed in this environment; the class-module check guards instead")
    assert b"ModuleNotFoundError" in result.stderr
