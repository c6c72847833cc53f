"""No code from a user's folder runs unless the user asked (`--trust-remote-code`): the audit of every loader.

`recipes.loading` decides for inference (tests/test_loading.py). Everything else that reads a user's folder (stage-1
towers, the stage-2 model, export, conversion) loads with the package's or transformers' own classes and passes
`trust_remote_code=False`: transformers would otherwise *ask* on an interactive terminal whether to run a folder's
code, and one "y" would run it. The hostile folders here ship code that writes a marker file; the prompt is answered
"y" (as a user might), and the marker must not appear.
"""

from __future__ import annotations

import ast
import builtins
import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
AUDITED = ("recipes", "hub_upload", "benchmarks", "modeling_sqllava", "processing")
# Loader calls that may omit `trust_remote_code`, with the reason.
EXEMPT = {
    ("recipes/loading.py", "SQLlavaForConditionalGeneration"): "the package's own class",
    ("recipes/loading.py", "SQLlavaProcessor"): "reached only once foreign_code_files found no code to run",
    ("benchmarks/bench_collator.py", "AutoTokenizer"): "the repository's own vocabulary fixture, not a user path",
}


def _loader_calls():
    for folder in AUDITED:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                if call and node.func.attr == "from_pretrained":
                    owner = ast.unparse(node.func.value).rsplit(".", 1)[-1]
                    yield path.relative_to(REPO_ROOT).as_posix(), node.lineno, owner, node.keywords


def test_every_auto_class_or_processor_load_states_trust_remote_code():
    """Auto classes and processors (which load their tokenizer and image processor through Auto classes) may run a
    folder's code: each call passes `trust_remote_code` explicitly (False, or the user's flag)."""
    unstated, literal_true = [], []
    for path, line, owner, keywords in _loader_calls():
        if not (owner.startswith("Auto") or owner.endswith(("Processor", "auto_class"))):
            continue  # concrete model/config classes never resolve remote code
        values = {k.arg: k.value for k in keywords}
        if "trust_remote_code" not in values:
            if (path, owner) not in EXEMPT:
                unstated.append(f"{path}:{line} {owner}")
        elif isinstance(values["trust_remote_code"], ast.Constant) and values["trust_remote_code"].value is True:
            literal_true.append(f"{path}:{line} {owner}")
    assert unstated == [] and literal_true == []


def _plant_code(folder: Path, marker: Path, module: str, class_name: str, base: str) -> None:
    (folder / f"{module}.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import {base} as {class_name}\n"
    )


def _evil_tokenizer(folder: Path, marker: Path) -> None:
    _plant_code(folder, marker, "tokenization_evil", "EvilTokenizer", "LlamaTokenizerFast")
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    auto_map = {"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]}
    config.update(tokenizer_class="EvilTokenizer", auto_map=auto_map)
    path.write_text(json.dumps(config))


@pytest.fixture()
def answer_yes(monkeypatch):
    """Answer transformers' "Do you wish to run the custom code? [y/N]" with y."""
    monkeypatch.setattr(builtins, "input", lambda *args: "y")


def test_stage1_towers_run_no_folder_code(tmp_path, tiny_tokenizer, answer_yes):
    """A text tower whose config maps AutoConfig / AutoModelForCausalLM to its own files, and whose tokenizer does
    the same: building the stage-1 processor and model refuses them and runs nothing."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from modeling_sqllava import SQLlavaForConditionalGeneration
    from recipes.common import build_processor_from_towers
    from recipes.tiny import TINY_TEXT_CONFIG, TINY_VISION_CONFIG

    marker = tmp_path / "MARKER"
    clip, text = tmp_path / "clip", tmp_path / "llama"
    CLIPVisionModel(CLIPVisionConfig(**TINY_VISION_CONFIG)).save_pretrained(clip)
    LlamaForCausalLM(LlamaConfig(**TINY_TEXT_CONFIG, vocab_size=len(tiny_tokenizer))).save_pretrained(text)
    tiny_tokenizer.save_pretrained(text)
    _plant_code(text, marker, "modeling_evil", "EvilModel", "LlamaForCausalLM")
    _plant_code(text, marker, "configuration_evil", "EvilConfig", "LlamaConfig")
    config = json.loads((text / "config.json").read_text())
    config.update(model_type="evil-llama", auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                                                     "AutoModelForCausalLM": "modeling_evil.EvilModel"})  # fmt: skip
    (text / "config.json").write_text(json.dumps(config))

    with pytest.raises(ValueError, match="trust_remote_code"):
        SQLlavaForConditionalGeneration.from_vision_text_pretrained(str(clip), str(text), num_prototypes=4)
    _evil_tokenizer(text, marker)
    with pytest.raises(ValueError, match="trust_remote_code"):
        build_processor_from_towers(str(clip), str(text))
    assert not marker.exists()


def test_stage2_and_export_run_no_folder_code(tmp_path, tiny_tokenizer, answer_yes):
    """The stage-1 folder that finetune.py and the exporter read ships a tokenizer asking for its own code."""
    from hub_upload.export import export_model
    from recipes.common import ModelArguments
    from recipes.finetune import build_stage2_model
    from recipes.tiny import build_tiny_model, build_tiny_processor

    marker = tmp_path / "MARKER"
    stage1 = tmp_path / "stage1"
    build_tiny_model(tiny_tokenizer).save_pretrained(stage1)
    build_tiny_processor(tiny_tokenizer).save_pretrained(stage1)
    _evil_tokenizer(stage1, marker)
    # The processor builds the package's own tokenizer class from the folder's vocabulary files, whatever class the
    # folder's tokenizer_config names: the planted module is never imported.
    _, processor = build_stage2_model(ModelArguments(model_name_or_path=str(stage1), lora_r=4, lora_alpha=8))
    assert type(processor.tokenizer).__name__ == "SQLlavaTokenizer"
    assert type(processor.tokenizer).__module__.startswith("processing.")
    export_model(base_model=str(stage1), output_dir=str(tmp_path / "out"), verify=False)
    assert not marker.exists()
    assert not any(name.startswith("transformers_modules") and "evil" in name for name in sys.modules)
