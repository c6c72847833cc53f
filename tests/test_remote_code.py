"""Remote-code loading: `save_pretrained` writes the code files and an `auto_map`, and a fresh process that cannot
import this repository loads the folder with `trust_remote_code=True` and reproduces the logits exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch

from modeling_sqllava import SQLlavaForConditionalGeneration
from recipes.tiny import tiny_model_config

torch.set_num_threads(1)

AUTO_CLASSES = ("AutoConfig", "AutoModel", "AutoModelForImageTextToText", "AutoModelForVision2Seq")

LOAD_SCRIPT = textwrap.dedent(
    """
    import sys, torch, transformers
    torch.set_num_threads(1)
    folder, inputs_path = sys.argv[1], sys.argv[2]
    assert not any("modeling_sqllava" in name for name in sys.modules)
    inputs = torch.load(inputs_path)
    # 4.x users write AutoModelForVision2Seq, 5.x users AutoModelForImageTextToText: both must work where they exist.
    names = ["AutoModelForImageTextToText"] + (["AutoModelForVision2Seq"] if hasattr(transformers, "AutoModelForVision2Seq") else [])
    for name in names:
        model = getattr(transformers, name).from_pretrained(folder, trust_remote_code=True).eval()
        module = type(model).__module__
        assert module.startswith("transformers_modules"), module
        with torch.no_grad():
            logits = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"]).logits
        assert torch.equal(logits, inputs["logits"]), (name, (logits - inputs["logits"]).abs().max())
        print("loaded", name, type(model).__name__)
    base = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True)
    print("loaded AutoModel", type(base).__name__)
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    print("loaded AutoConfig", type(config).__name__, config.image_seq_length)
    """
)


def clean_env(tmp_path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def test_save_pretrained_writes_code_and_full_auto_map(tmp_path):
    model = SQLlavaForConditionalGeneration(tiny_model_config(num_prototypes=8))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "modeling_sqllava.py").is_file() and (tmp_path / "configuration_sqllava.py").is_file()
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert set(AUTO_CLASSES) <= set(auto_map)
    assert auto_map["AutoConfig"] == "configuration_sqllava.SQLlavaConfig"
    assert auto_map["AutoModel"] == "modeling_sqllava.SQLlavaModel"
    for name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):
        assert auto_map[name] == "modeling_sqllava.SQLlavaForConditionalGeneration"
    # Shipped files import only torch/transformers/stdlib and each other (sibling-relative).
    for filename in ("modeling_sqllava.py", "configuration_sqllava.py"):
        for line in (tmp_path / filename).read_text().splitlines():
            if line.startswith(("import ", "from ")):
                module = line.split()[1]
                assert module.split(".")[0] in {
                    "__future__",
                    "inspect",
                    "math",
                    "dataclasses",
                    "torch",
                    "transformers",
                } or (module.startswith(".")), line


def test_fresh_process_loads_folder_with_trust_remote_code(tmp_path):
    torch.manual_seed(0)
    model = SQLlavaForConditionalGeneration(tiny_model_config(num_prototypes=8)).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    input_ids = torch.tensor([[1, 5, 6] + [model.config.image_token_id] * model.config.image_seq_length + [7, 8]])
    pixel_values = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=pixel_values).logits
    torch.save({"input_ids": input_ids, "pixel_values": pixel_values, "logits": logits}, tmp_path / "inputs.pt")
    work = tmp_path / "elsewhere"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(folder), str(tmp_path / "inputs.pt")],
        cwd=work,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "loaded AutoModelForImageTextToText SQLlavaForConditionalGeneration" in result.stdout
    import transformers

    if hasattr(transformers, "AutoModelForVision2Seq"):
        assert "loaded AutoModelForVision2Seq SQLlavaForConditionalGeneration" in result.stdout
    assert "loaded AutoModel SQLlavaModel" in result.stdout
    assert "loaded AutoConfig SQLlavaConfig 16" in result.stdout
