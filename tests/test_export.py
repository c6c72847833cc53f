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
    PrototypeAssignments,
    VerificationReference,
    compute_logits,
    compute_reference,
    export_model,
    fixed_verification_inputs,
    main,
    relative_logit_error,
    verify_export_folder,
)
from tests.conftest import other_transformers_python

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
    # Pinned comparisons never exceed the unpinned ones, and the flips behind the difference are reported.
    assert report["native_relative_error"] <= report["native_unpinned_relative_error"]
    assert 0.0 <= report["native_prototype_flip_fraction"] <= 1.0
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
    reference = compute_reference(training_output["peft_model"], inputs)
    # Pinning the prototype assignments does not excuse a wrong merge: it is named as such.
    with pytest.raises(ExportVerificationError, match="max relative logit error.*the merged weights are wrong"):
        verify_export_folder(output, inputs, reference, dtype="float32")
    with pytest.raises(TypeError, match="compute_reference"):
        verify_export_folder(output, inputs, reference.logits, dtype="float32")


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
    reference = compute_reference(training_output["peft_model"], inputs)
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


# --------------------------------------------------------------------------- pinned assignments and near-tie flips


def test_pinned_check_tells_prototype_flips_from_a_wrong_merge(float32_export, training_output, caplog):
    """A reference whose extractor picked other prototypes for 4 of the 16 patches (as rounding does to near-tied
    patches): unpinned, the export differs from it by far more than the float32 tolerance; pinned to the reference's
    assignments it reproduces it, and the flips are reported (their fraction and the similarity gap, computed here
    in float64 from the reference similarities)."""
    import logging

    output, _ = float32_export
    peft_model = training_output["peft_model"]
    inputs = fixed_verification_inputs(peft_model.base_model.model.config)
    true_reference = compute_reference(peft_model, inputs)
    (assignment,) = true_reference.assignments
    assert assignment.shape == (1, 16)
    moved = assignment.clone()
    moved[0, :4] = (moved[0, :4] + 1) % peft_model.base_model.model.config.num_prototypes
    with PrototypeAssignments(peft_model, pinned=[moved]) as replay, torch.no_grad():
        logits = compute_logits(peft_model, inputs)
    assert torch.equal(replay.assignments[0], assignment)  # the model's own argmax is still what gets recorded
    reference = VerificationReference(logits, [moved], true_reference.similarities)

    with caplog.at_level(logging.INFO, logger="hub_upload.export"):
        report = verify_export_folder(output, inputs, reference, dtype="float32")
    assert report["max_relative_error"] < 1e-4 < report["unpinned_relative_error"]
    assert report["prototype_flip_fraction"] == 4 / 16
    similarity = true_reference.similarities[0][0].double()  # (K, L)
    gaps = [abs(similarity[moved[0, i], i] - similarity[assignment[0, i], i]).item() for i in range(4)]
    assert report["prototype_flip_max_margin"] == pytest.approx(max(gaps), rel=1e-6)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Verified")]
    assert "None" not in line and "25.0% of patches flip" in line  # no "(in float32: None)"


def test_pinning_refuses_an_extractor_it_does_not_understand():
    """PrototypeAssignments raises when the extractor's argmax calls are not exactly one per forward."""

    class SQLlavaPrototypeExtractor(torch.nn.Module):  # the name is what PrototypeAssignments looks for
        def forward(self, x):
            return x.argmax(dim=1) + x.argmax(dim=1)

    module = SQLlavaPrototypeExtractor()
    with pytest.raises(RuntimeError, match="2 argmax calls"), PrototypeAssignments(module):
        module(torch.randn(1, 3, 4))
    with PrototypeAssignments(module):  # hooks are removed on exit: a later plain call is not checked
        pass
    module(torch.randn(1, 3, 4))


# ---------------------------------------------------------------------- what the export reads and what it writes


def _copy_training_output(training_output, tmp_path):
    import shutil

    base, adapter = tmp_path / "base", tmp_path / "adapter"
    shutil.copytree(training_output["base"], base)
    shutil.copytree(training_output["adapter"], adapter)
    return base, adapter


def _edit_json(path: Path, edit) -> None:
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_lora_b(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    save_file({k: v for k, v in state.items() if "layers.1.self_attn.q_proj.lora_B" not in k}, str(path))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("truncated adapter", r"adapter/adapter_model.safetensors is not a readable safetensors file"),
        ("adapter misses tensors", (r"adapter/adapter_model.safetensors does not match .*missing tensors "
                                    r"\['base_model.model.model.language_model.layers.1.self_attn.q_proj.lora_B")),
        ("adapter config r is a string", r"adapter/adapter_config.json: `r` = '4' \(str\) must be an integer"),
        ("adapter config not json", r"adapter/adapter_config.json is not valid JSON \(line 1, column 2"),
        ("truncated base", r"base/model.safetensors is not a readable safetensors file"),
        ("base text hidden_size is a string", r"base/config.json: `text_config.hidden_size` = '64' \(str\)"),
        ("base num_prototypes is a string", r"base/config.json: .*num_prototypes.*'6'"),
    ],
)  # fmt: skip
def test_load_errors_name_the_file_and_the_key(training_output, tmp_path, case, message):
    """Damaged inputs fail before any export work, with the file (and the key) in the message; PEFT alone would only
    warn about the missing LoRA tensors and merge a zero update."""
    base, adapter = _copy_training_output(training_output, tmp_path)
    damage = {
        "truncated adapter": lambda: _truncate(adapter / "adapter_model.safetensors"),
        "adapter misses tensors": lambda: _drop_lora_b(adapter / "adapter_model.safetensors"),
        "adapter config r is a string": lambda: _edit_json(adapter / "adapter_config.json", lambda c: c.update(r="4")),
        "adapter config not json": lambda: (adapter / "adapter_config.json").write_text("{r: 4}"),
        "truncated base": lambda: _truncate(base / "model.safetensors"),
        "base text hidden_size is a string": lambda: _edit_json(
            base / "config.json", lambda c: c["text_config"].update(hidden_size="64")
        ),
        "base num_prototypes is a string": lambda: _edit_json(
            base / "config.json", lambda c: c.update(num_prototypes="6")
        ),
    }
    damage[case]()
    with pytest.raises((ValueError, TypeError), match=message):
        export_model(base_model=str(base), adapter=str(adapter), output_dir=str(tmp_path / "out"), verify=False)
    assert not (tmp_path / "out").exists()  # nothing was written


def test_export_refuses_pickles_by_content_and_foreign_code_in_output_dir(training_output, tmp_path):
    """A stale pickle in the output folder is found whatever its name, and code files the export did not write (an
    image processor `auto_map` pointing to them) are refused before the verification could run them."""
    import pickle

    output = tmp_path / "out"
    output.mkdir()
    (output / "extra.safetensors").write_bytes(pickle.dumps({"weights": [1.0]}))
    with pytest.raises(ValueError, match=r"already holds pickle files \['extra.safetensors \(a pickle stream"):
        export_model(base_model=str(training_output["base"]), output_dir=str(output), verify=False)

    (output / "extra.safetensors").unlink()
    marker = tmp_path / "MARKER"
    (output / "image_processing_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import CLIPImageProcessor as EvilProcessor\n"
    )
    (output / "preprocessor_config.json").write_text(
        json.dumps({"auto_map": {"AutoImageProcessor": "image_processing_evil.EvilProcessor"}})
    )
    with pytest.raises(ValueError, match=r"already holds code the export did not write \(image_processing_evil.py"):
        export_model(base_model=str(training_output["base"]), output_dir=str(output), dtype="float32")
    assert not marker.exists()


def test_model_card_claims_only_the_hub_models_the_weights_came_from(training_output, tmp_path):
    """finetune.py passes its whole configuration, whose stage-1 tower fields are unused defaults in stage 2
    (lmsys/vicuna-7b-v1.5, openai/clip-vit-large-patch14-336): a model built from local towers claims neither. Tower
    ids recorded by from_pretrained in the sub-configs are claimed."""
    from huggingface_hub import ModelCard

    from recipes.common import DataArguments, ModelArguments

    training_config = {**vars(ModelArguments()), **vars(DataArguments(data_path=["data.json"])), "learning_rate": 2e-4}
    assert training_config["text_model_name_or_path"] == "lmsys/vicuna-7b-v1.5"
    local = tmp_path / "local"
    export_model(base_model=str(training_output["base"]), output_dir=str(local), verify=False,
                 training_config=training_config)  # fmt: skip
    card = ModelCard.load(local / "README.md")
    assert card.data.base_model is None
    metadata = card.content.split("\n---", 1)[0]
    assert "vicuna" not in metadata and "clip-vit" not in metadata
    assert "Base model(s): not recorded (local checkpoints)" in card.text

    base, _ = _copy_training_output(training_output, tmp_path)
    towers = {"text_config": "lmsys/vicuna-7b-v1.5", "vision_config": "openai/clip-vit-large-patch14-336"}
    _edit_json(base / "config.json", lambda c: [c[key].update(_name_or_path=name) for key, name in towers.items()])
    export_model(base_model=str(base), output_dir=str(tmp_path / "hub"), verify=False)
    assert ModelCard.load(tmp_path / "hub" / "README.md").data.base_model == list(towers.values())


# --------------------------------------------------------------------------------------- the README's snippet


def test_readme_snippet_runs_and_prints_the_answer_without_special_tokens(float32_export, tmp_path):
    """The Python snippet at the top of README.md, run verbatim in a fresh process outside the repository against the
    tiny export (its repo id and image path replaced), prints the answer without `</s>`. The export's generation
    config forces `</s>` as the last token, so decoding it without skipping special tokens would show it (checked)."""
    import re
    import shutil
    import subprocess
    import sys

    from PIL import Image

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.DOTALL).group(1)
    assert 'Image.open("photo.jpg")' in snippet and '"you/sqllava-7b"' in snippet
    folder = tmp_path / "tiny-export"
    shutil.copytree(float32_export[0], folder)
    _edit_json(folder / "generation_config.json", lambda c: c.update(forced_eos_token_id=c["eos_token_id"]))
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "photo.png")
    code = snippet.replace('"you/sqllava-7b"', repr(str(folder)))
    code = code.replace('"photo.jpg"', repr(str(tmp_path / "photo.png")))
    # The same output decoded without skipping special tokens: proves the check above can fail.
    code += '\nprint("RAW:" + processor.decode(output[0, inputs["input_ids"].shape[1]:]))\n'
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_VERBOSITY="error")
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    answer, raw = result.stdout.rstrip("\n").rsplit("\nRAW:", 1)
    assert raw.endswith("</s>")
    assert "</s>" not in answer and "<image>" not in answer and answer.strip()
