"""Cross-version checkpoints: a folder saved under transformers 5.x loads under 4.57.x with identical logits and vice
versa, with no missing or unexpected keys.

The other transformers runs in a subprocess: `SQLLAVA_OTHER_PYTHON` names its interpreter; by default the repository's
`.venv457` (when this process runs transformers 5.x) or `.venv` (when it runs 4.x). Skips with the reason when absent.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
import transformers

from modeling_sqllava import SQLlavaForConditionalGeneration
from recipes.tiny import tiny_model_config

torch.set_num_threads(1)
REPO_ROOT = Path(__file__).resolve().parents[1]


def other_python() -> Path | None:
    if os.environ.get("SQLLAVA_OTHER_PYTHON"):
        return Path(os.environ["SQLLAVA_OTHER_PYTHON"])
    venv = ".venv457" if int(transformers.__version__.split(".")[0]) >= 5 else ".venv"
    return REPO_ROOT / venv / "bin" / "python"


OTHER_SCRIPT = textwrap.dedent(
    """
    import sys, torch, transformers
    torch.set_num_threads(1)
    folder_in, inputs_path, folder_out = sys.argv[1:4]
    inputs = torch.load(inputs_path)
    name = "AutoModelForImageTextToText"
    model, info = getattr(transformers, name).from_pretrained(
        folder_in, trust_remote_code=True, output_loading_info=True
    )
    model.eval()
    missing, unexpected = info["missing_keys"], info["unexpected_keys"]
    assert not missing and not unexpected, (missing, unexpected)
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"]).logits
    print("version", transformers.__version__, "max_abs_diff", (logits - inputs["logits"]).abs().max().item())
    assert torch.equal(logits, inputs["logits"])
    with torch.no_grad():  # distinctive values so that the reverse direction cannot pass by re-initialisation
        model.model.multi_modal_projector.extractor.sim_beta.fill_(-0.25)
        logits = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"]).logits
    model.save_pretrained(folder_out)
    torch.save(logits, folder_out + "/logits.pt")
    print("ok")
    """
)


def test_checkpoints_load_across_transformers_versions(tmp_path):
    python = other_python()
    if python is None or not python.is_file():
        pytest.skip(f"no other transformers environment at {python}; set SQLLAVA_OTHER_PYTHON to its python")

    torch.manual_seed(0)
    model = SQLlavaForConditionalGeneration(tiny_model_config(num_prototypes=8)).eval()
    model.save_pretrained(tmp_path / "here")
    input_ids = torch.tensor([[1, 5, 6] + [model.config.image_token_id] * model.config.image_seq_length + [7, 8]])
    pixel_values = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=pixel_values).logits
    torch.save({"input_ids": input_ids, "pixel_values": pixel_values, "logits": logits}, tmp_path / "inputs.pt")

    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [
            str(python),
            "-c",
            OTHER_SCRIPT,
            str(tmp_path / "here"),
            str(tmp_path / "inputs.pt"),
            str(tmp_path / "there"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr

    # Reverse direction: the other version's checkpoint, loaded here.
    loaded, info = SQLlavaForConditionalGeneration.from_pretrained(tmp_path / "there", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert loaded.model.multi_modal_projector.extractor.sim_beta.item() == -0.25
    with torch.no_grad():
        reloaded = loaded.eval()(input_ids=input_ids, pixel_values=pixel_values).logits
    assert torch.equal(reloaded, torch.load(tmp_path / "there" / "logits.pt"))
