"""recipes/loading.py: a user's `--model` runs its own code only with `trust_remote_code=True`.

The hostile folders are made here: an SQ-LLaVA folder whose `modeling_sqllava.py` writes a marker file when imported,
one with an extra module named by its `auto_map`, and one whose `auto_map` points into another repository. Loading
them without the flag must fail before anything is imported (no marker); loading a folder exactly as this package
saves it must work without the flag and without importing anything from the folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from recipes.loading import RemoteCodeError, foreign_code_files, load_model_and_processor, resolve_model_path
from tests.hub_server import fake_hub  # noqa: F401 - pytest fixture

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory, tiny_tokenizer, tiny_processor):
    """A tiny SQ-LLaVA saved with `save_pretrained` (model + processor): code files copied from this package."""
    from recipes.tiny import build_tiny_model

    folder = tmp_path_factory.mktemp("sqllava") / "model"
    build_tiny_model(tiny_tokenizer).save_pretrained(folder)
    tiny_processor.save_pretrained(folder)
    return folder


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def _plant_marker(folder: Path, marker: Path) -> None:
    """Make the folder's modeling file write `marker` when it is imported."""
    path = folder / "modeling_sqllava.py"
    payload = f"import pathlib as _p; _p.Path({str(marker)!r}).write_text('ran')\n"
    head = "from __future__ import annotations\n"  # must stay the first statement
    path.write_text(path.read_text().replace(head, head + payload, 1))


def test_folder_saved_by_this_package_loads_without_remote_code(saved_folder):
    """Identical code files: the package's classes are used, nothing is imported from the folder."""
    from modeling_sqllava import SQLlavaForConditionalGeneration
    from processing import SQLlavaProcessor

    assert {"modeling_sqllava.py", "configuration_sqllava.py", "processing_sqllava.py"} <= {
        p.name for p in saved_folder.glob("*.py")
    }
    assert foreign_code_files(saved_folder) == {}
    before = {name for name in sys.modules if name.startswith("transformers_modules")}
    model, processor = load_model_and_processor(str(saved_folder), dtype="float32", device="cpu")
    after = {name for name in sys.modules if name.startswith("transformers_modules")}
    assert after == before
    assert type(model) is SQLlavaForConditionalGeneration and type(processor) is SQLlavaProcessor
    assert not model.training and model.dtype == torch.float32


def test_modified_code_file_is_refused_and_never_runs(saved_folder, tmp_path):
    folder = _copy(saved_folder, tmp_path)
    marker = tmp_path / "marker.txt"
    _plant_marker(folder, marker)
    assert foreign_code_files(folder) == {"modeling_sqllava.py": "differs from the installed sqllava's copy"}
    with pytest.raises(RemoteCodeError) as error:
        load_model_and_processor(str(folder), device="cpu")
    message = str(error.value)
    assert "modeling_sqllava.py" in message and "--trust-remote-code" in message and "nothing was loaded" in message
    assert not marker.exists()


def test_extra_module_and_foreign_auto_map_are_refused(saved_folder, tmp_path):
    folder = _copy(saved_folder, tmp_path)
    (folder / "helpers.py").write_text("X = 1\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"]["AutoModel"] = "someone/else--modeling_evil.Evil"
    config["auto_map"]["AutoConfig"] = "configuration_evil.EvilConfig"
    (folder / "config.json").write_text(json.dumps(config))
    foreign = foreign_code_files(folder)
    assert foreign["helpers.py"] == "not a file sqllava ships"
    assert foreign["configuration_evil.py"].startswith("named by config.json's auto_map")
    assert foreign["config.json: someone/else--modeling_evil.Evil"] == "auto_map points to code in another repository"
    with pytest.raises(RemoteCodeError, match="helpers.py"):
        load_model_and_processor(str(folder), device="cpu")


@pytest.mark.slow
def test_trust_remote_code_runs_the_folder_code(saved_folder, tmp_path):
    """The flag is honoured: with it, the folder's (modified) code is what runs. In a fresh process, so that the
    dynamic-module cache is its own."""
    folder = _copy(saved_folder, tmp_path)
    marker = tmp_path / "marker.txt"
    _plant_marker(folder, marker)
    script = textwrap.dedent(
        f"""
        from recipes.loading import load_model_and_processor
        model, _ = load_model_and_processor({str(folder)!r}, trust_remote_code=True, device="cpu")
        print(type(model).__module__)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("transformers_modules.")
    assert marker.read_text() == "ran"


def test_hub_repo_with_foreign_code_is_refused_before_download_of_weights(fake_hub, saved_folder, tmp_path):  # noqa: F811
    """The same rule for a Hub id: only the config and code files are fetched to decide, never the weights."""
    from hub_upload.push import push_folder

    folder = _copy(saved_folder, tmp_path)
    marker = tmp_path / "marker.txt"
    _plant_marker(folder, marker)
    push_folder(folder, "tester/evil")
    with pytest.raises(RemoteCodeError, match="modeling_sqllava.py"):
        load_model_and_processor("tester/evil", device="cpu")
    assert not marker.exists()
    downloaded = [path for method, path, status in fake_hub.requests if method == "GET" and status == 200]
    assert any(path.endswith("/modeling_sqllava.py") for path in downloaded)
    assert not any(path.endswith(".safetensors") or "/__lfs__/" in path for path in downloaded)


def test_hub_repo_saved_by_this_package_loads(fake_hub, saved_folder):  # noqa: F811
    from hub_upload.push import push_folder

    push_folder(saved_folder, "tester/good")
    model, _ = load_model_and_processor("tester/good", dtype="float32", device="cpu")
    reference, _ = load_model_and_processor(str(saved_folder), dtype="float32", device="cpu")
    for (name, tensor), (_, expected) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(tensor, expected), name


@pytest.mark.parametrize(
    "value, message",
    [
        ("outputs/tiny/mergd", "no such folder"),
        ("./missing", "no such folder"),
        ("/abs/missing", "no such folder"),
        ("~/missing", "no such folder"),
    ],
)
def test_missing_local_folder_is_named(value, message):
    with pytest.raises(ValueError, match=message) as error:
        resolve_model_path(value)
    assert repr(value) in str(error.value)


def test_model_path_kinds(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        resolve_model_path(str(tmp_path / "weights.safetensors"))
    assert resolve_model_path(str(tmp_path)) == (str(tmp_path), True)
    assert resolve_model_path("someone/sqllava-7b") == ("someone/sqllava-7b", False)


def test_bad_dtype_is_named(saved_folder):
    with pytest.raises(ValueError, match="dtype='fp8'"):
        load_model_and_processor(str(saved_folder), dtype="fp8")
