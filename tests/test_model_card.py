"""The model card renders with Hub metadata that huggingface_hub parses back, and shows what it was given."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard

from hub_upload.model_card import render_model_card

TRAINING_CONFIG = {
    "pretrain": {"learning_rate": 1e-3, "per_device_train_batch_size": 32, "num_train_epochs": 1},
    "finetune": {"learning_rate": 2e-4, "vision_lr": 2e-5, "lora": {"r": 128, "alpha": 256}, "sq_ratio": 0.5},
}
METRICS = {"GQA": {"accuracy": 63.25, "dataset": "lmms-lab/GQA", "split": "testdev"}, "MME": 1512.5}
FIGURES = {"training_time_hours": 11.5, "tokens_per_second": 3150.0, "peak_memory_gib": 61.2, "hardware": "8x A100"}


def _card(**overrides):
    kwargs = {
        "repo_id": "tester/sqllava-tiny",
        "base_model": ["lmsys/vicuna-7b-v1.5", "openai/clip-vit-large-patch14-336"],
        "datasets": ["liuhaotian/LLaVA-Instruct-150K", "Lin-Chen/ShareGPT4V"],
        "license": "llama2",
        "training_config": TRAINING_CONFIG,
        "metrics": METRICS,
        "figures": FIGURES,
        "eval_source": "recipes/eval.py",
        "eval_source_url": "https://github.com/example/sqllava",
    }
    kwargs.update(overrides)
    return render_model_card(**kwargs)


def test_metadata_round_trips_through_modelcard_load(tmp_path):
    """Written to README.md and loaded back, the card exposes the Hub metadata fields the Hub indexes."""
    path = tmp_path / "README.md"
    _card().save(path)
    data = ModelCard.load(path).data

    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-text-to-text"
    assert data.license == "llama2"
    assert data.base_model == ["lmsys/vicuna-7b-v1.5", "openai/clip-vit-large-patch14-336"]
    assert data.datasets == ["liuhaotian/LLaVA-Instruct-150K", "Lin-Chen/ShareGPT4V"]
    assert {"sqllava", "llava", "self-questioning", "vision-language"} <= set(data.tags)
    assert len(data.tags) == len(set(data.tags))


def test_eval_results_become_model_index():
    """Each number in `metrics` is one model-index result with its dataset, split and source; bare numbers are 'score'."""
    results = {(r.dataset_name, r.metric_type): r for r in ModelCard(str(_card())).data.eval_results}
    assert set(results) == {("GQA", "accuracy"), ("MME", "score")}
    gqa = results[("GQA", "accuracy")]
    assert gqa.metric_value == pytest.approx(63.25)
    assert (gqa.dataset_type, gqa.dataset_split, gqa.task_type) == ("lmms-lab/GQA", "testdev", "image-text-to-text")
    assert gqa.source_name == "recipes/eval.py" and gqa.source_url == "https://github.com/example/sqllava"
    assert results[("MME", "score")].metric_value == pytest.approx(1512.5)


def test_body_shows_usage_config_figures_and_results():
    text = _card().text
    # Usage for both transformers generations, with the repo id and remote code.
    assert "AutoModelForImageTextToText.from_pretrained(" in text and "AutoModelForVision2Seq.from_pretrained(" in text
    assert 'repo_id = "tester/sqllava-tiny"' in text and text.count("trust_remote_code=True") >= 4
    # Self-questioning: the vuser generation role and the paper's sampling settings.
    assert 'generation_role="vuser"' in text and "add_generation_prompt=True" in text
    assert "temperature=1.2" in text and "top_k=300" in text and "top_p=0.95" in text
    # One configuration table per stage, nested keys flattened.
    assert "### pretrain" in text and "### finetune" in text
    assert "| `lora.r` | 128 |" in text and "| `vision_lr` | 2e-05 |" in text and "| `learning_rate` | 0.001 |" in text
    assert "| Throughput (tokens/s) | 3150 |" in text and "| Peak GPU memory per device (GiB) | 61.2 |" in text
    assert "| GQA | testdev | accuracy | 63.25 |" in text and "| MME | - | score | 1512.5 |" in text


def test_body_shows_the_lmms_eval_command():
    text = _card().text
    assert "### Evaluate with lmms-eval" in text
    assert "lmms-eval --model sqllava --model_args pretrained=tester/sqllava-tiny,dtype=bfloat16 \\\n" in text


def test_optional_sections_absent_without_data():
    """Without config, figures or metrics the card has no empty tables and no model-index."""
    card = _card(training_config=None, metrics=None, figures=None, datasets=None)
    assert card.data.eval_results is None and card.data.datasets is None
    assert "model-index" not in str(card)
    for heading in ("## Training configuration", "## Measured training figures", "## Evaluation"):
        assert heading not in card.text
    assert "## Usage" in card.text


def test_flat_config_and_escaping():
    card = _card(training_config={"optim": "adamw_torch", "note": "a|b", "gradient_checkpointing": True})
    assert "| `optim` | adamw_torch |" in card.text
    assert "| `note` | a\\|b |" in card.text and "| `gradient_checkpointing` | true |" in card.text


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"repo_id": "no-namespace"}, ValueError, "repo_id='no-namespace'"),
        ({"license": ""}, ValueError, "license=''"),
        ({"base_model": []}, ValueError, "base_model"),
        ({"base_model": "/tmp/outputs/tiny/towers/llama"}, ValueError, "a local path is not a Hub id"),
        ({"base_model": ["lmsys/vicuna-7b-v1.5", "outputs/tiny/towers/clip"]}, ValueError, "'owner/name'"),
        ({"metrics": {"GQA": "high"}}, TypeError, r"metrics\['GQA'\]='high'"),
        ({"metrics": {"GQA": {"accuracy": "63"}}}, TypeError, r"metrics\['GQA'\]\['accuracy'\]='63'"),
        ({"metrics": {"GQA": {"split": "testdev"}}}, ValueError, "holds no score"),
        ({"figures": [1, 2]}, TypeError, "figures must be a mapping"),
    ],
)
def test_invalid_arguments_are_named(overrides, error, match):
    with pytest.raises(error, match=match):
        _card(**overrides)


def test_local_only_weights_claim_no_base_model(tmp_path):
    """`base_model=None` (weights from local checkpoints only): no `base_model` metadata, and the card says so."""
    path = tmp_path / "README.md"
    _card(base_model=None).save(path)
    card = ModelCard.load(path)
    assert card.data.base_model is None and "base_model" not in str(card).split("\n---", 1)[0]
    assert "Base model(s): not recorded (local checkpoints)" in card.text


def test_vllm_serving_commands_name_the_repo_and_are_valid_python():
    import ast
    import re

    text = _card().text
    assert "### Serve with vLLM" in text
    server = re.search(r"python -m vllm\.entrypoints\.openai\.api_server[^\n]*\n[^\n]*", text).group(0)
    assert "--model tester/sqllava-tiny" in server and "--model-impl transformers" in server
    assert "--trust-remote-code" in server and "--host 127.0.0.1" in server
    python_blocks = re.findall(r"```python\n(.*?)```", text.split("### Serve with vLLM")[1], flags=re.S)
    assert len(python_blocks) == 2
    for block in python_blocks:
        ast.parse(block)  # the snippets a user copies are valid Python
    assert '"chat_template_kwargs": {"generation_role": "vuser"}' in python_blocks[0]
    assert 'LLM(model="tester/sqllava-tiny", model_impl="transformers", trust_remote_code=True)' in python_blocks[1]
