"""The model card (`README.md`) of an exported SQ-LLaVA repo: Hub metadata, usage, training configuration, figures.

>>> card = render_model_card(
...     repo_id="your-name/sqllava-7b",
...     base_model="lmsys/vicuna-7b-v1.5",
...     datasets=["liuhaotian/LLaVA-Instruct-150K"],
...     license="llama2",
... )
>>> card.data.pipeline_tag
'image-text-to-text'
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

PAPER_URL = "https://arxiv.org/abs/2403.11299"
ORIGINAL_CODE_URL = "https://github.com/heliossun/SQ-LLaVA"
BASE_TAGS = ["sqllava", "llava", "self-questioning", "vision-language", "image-text-to-text", "custom_code"]
DEFAULT_CITATION = """@inproceedings{sun2024sqllava,
  title     = {SQ-LLaVA: Self-Questioning for Large Vision-Language Assistant},
  author    = {Sun, Guohao and Qin, Can and Wang, Jiamian and Chen, Zeyuan and Xu, Ran and Tao, Zhiqiang},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2024},
  eprint    = {2403.11299},
  archivePrefix = {arXiv}
}"""
# A Hub model id (`owner/name`, or a bare legacy name); paths (`/x`, `./x`, `a/b/c`) do not match.
_HUB_ID = re.compile(r"^(?:[\w-][\w.-]*/)?[\w-][\w.-]*$")
# Keys of `metrics[benchmark]` that describe the benchmark rather than hold a score.
_EVAL_DESCRIPTION_KEYS = ("dataset", "split", "config")
# Labels for the measured figures the training recipes report; other keys are shown as given.
FIGURE_LABELS = {
    "training_time_hours": "Training time (hours)",
    "training_time": "Training time",
    "tokens_per_second": "Throughput (tokens/s)",
    "samples_per_second": "Throughput (samples/s)",
    "peak_memory_gib": "Peak GPU memory per device (GiB)",
    "peak_memory_gb": "Peak GPU memory per device (GB)",
    "hardware": "Hardware",
    "num_gpus": "GPUs",
    "final_train_loss": "Final training loss",
}


def render_model_card(
    *,
    repo_id: str,
    base_model: str | list[str] | None,
    datasets: str | list[str] | None,
    license: str,
    training_config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    figures: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    description: str | None = None,
    language: str | list[str] | None = "en",
    extra_tags: list[str] | None = None,
    eval_source: str | None = None,
    eval_source_url: str | None = None,
    citation: str | None = DEFAULT_CITATION,
) -> ModelCard:
    """Render the `README.md` of an SQ-LLaVA model repo.

    Args:
        repo_id: the repo the card is for (`namespace/name`); used in the usage snippets.
        base_model: Hub id(s) of the models the weights derive from (e.g. the Vicuna LLM and the CLIP tower), or
            `None` when they come from local checkpoints only: the card then claims no base model.
        datasets: Hub id(s) of the training datasets, or `None`.
        license: Hub license identifier (e.g. `"llama2"`, `"apache-2.0"`).
        training_config: the configuration actually used, rendered as a table. Either flat
            (`{"learning_rate": 2e-4, ...}`) or one mapping per stage (`{"pretrain": {...}, "finetune": {...}}`).
        metrics: evaluation results, one entry per benchmark: `{"GQA": {"accuracy": 63.2, "dataset": "lmms-lab/GQA",
            "split": "testdev"}}` or `{"GQA": 63.2}` (a bare number is reported as metric `"score"`). Numbers also go
            into the `model-index` metadata; `dataset`/`split`/`config` only describe the benchmark.
        figures: measured training figures (`training_time_hours`, `tokens_per_second`, `peak_memory_gib`,
            `hardware`, ... any key is accepted; known keys get readable labels).
        model_name: title of the card and name in `model-index` (default: the repo name).
        description: a paragraph about this checkpoint, shown under the title.
        language: language code(s) of the text side.
        extra_tags: tags added to the default ones.
        eval_source: where the evaluation numbers come from (e.g. "measured with recipes/eval.py"), shown in the card.
        eval_source_url: link for `eval_source`; the Hub requires one to store the source in `model-index`.
        citation: BibTeX shown at the end (`None` to omit).

    Returns:
        `huggingface_hub.ModelCard`; write it with `card.save(folder / "README.md")`.
    """
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id={repo_id!r} must be 'namespace/name' (e.g. 'your-name/sqllava-7b').")
    if not isinstance(license, str) or not license:
        raise ValueError(f"license={license!r} must be a Hub license identifier such as 'llama2' or 'apache-2.0'.")
    if base_model is not None:
        names = _as_list(base_model)
        if not names or not all(isinstance(m, str) and _HUB_ID.match(m) for m in names):
            raise ValueError(
                f"base_model={base_model!r} must name the Hub model(s) the weights derive from ('owner/name'), or be "
                "None when they come from local checkpoints (a local path is not a Hub id)."
            )
    for name, value in (("training_config", training_config), ("metrics", metrics), ("figures", figures)):
        if value is not None and not isinstance(value, Mapping):
            raise TypeError(f"{name} must be a mapping or None, got {type(value).__name__}: {value!r}.")
    model_name = model_name or repo_id.split("/")[1]
    eval_rows = _eval_rows(metrics or {})

    eval_results = [
        EvalResult(
            task_type="image-text-to-text",
            task_name="Visual question answering and captioning",
            dataset_type=row["dataset"] or row["benchmark"],
            dataset_name=row["benchmark"],
            dataset_split=row["split"],
            dataset_config=row["config"],
            metric_type=row["metric"],
            metric_name=row["metric"],
            metric_value=row["value"],
            source_name=eval_source if eval_source_url else None,
            source_url=eval_source_url if eval_source else None,
        )
        for row in eval_rows
    ]
    card_data = ModelCardData(
        base_model=base_model,
        datasets=datasets,
        language=language,
        library_name="transformers",
        license=license,
        pipeline_tag="image-text-to-text",
        tags=BASE_TAGS + [tag for tag in extra_tags or [] if tag not in BASE_TAGS],
        model_name=model_name,
        eval_results=eval_results or None,
    )

    sections = [
        f"# {model_name}",
        description
        or (
            "SQ-LLaVA (Self-Questioning for Large Vision-Language Assistant) is a LLaVA-1.5 style model whose "
            "projector first condenses the CLIP patch features with a prototype extractor, and which is trained to "
            "ask questions about the image (self-questioning, role `vuser`) as well as to answer them. "
            "LoRA adapters of both the vision tower and the language model are merged into these weights."
        ),
        (
            f"- Paper: [{PAPER_URL}]({PAPER_URL})\n- Original code: [{ORIGINAL_CODE_URL}]({ORIGINAL_CODE_URL})\n"
            "- Base model(s): "
            + (", ".join(f"`{m}`" for m in _as_list(base_model)) if base_model else "not recorded (local checkpoints)")
        ),
        "## Usage\n\nThe model code ships with the repo, so loading needs `trust_remote_code=True`.",
        "### transformers 5.x\n\n" + _usage_snippet(repo_id, "AutoModelForImageTextToText", "dtype"),
        "### transformers 4.x (>= 4.57)\n\n" + _usage_snippet(repo_id, "AutoModelForVision2Seq", "torch_dtype"),
        "### Self-questioning\n\n"
        "The model can also ask a question about the image: end the prompt with the `vuser` role and sample.\n\n"
        + _self_questioning_snippet(),
        "### Serve with vLLM\n\n" + _vllm_snippet(repo_id),
        "### Evaluate with lmms-eval\n\n" + _lmms_eval_snippet(repo_id),
    ]
    if training_config:
        sections.append("## Training configuration\n\n" + _config_tables(training_config))
    if figures:
        sections.append("## Measured training figures\n\n" + _figures_table(figures))
    if eval_rows:
        source = f"\n\nSource: {eval_source}." if eval_source else ""
        if eval_source and eval_source_url:
            source = f"\n\nSource: [{eval_source}]({eval_source_url})."
        sections.append("## Evaluation\n\n" + _eval_table(eval_rows) + source)
    if citation:
        sections.append(f"## Citation\n\n```bibtex\n{citation}\n```")
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"
    return ModelCard(content)


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _usage_snippet(repo_id: str, auto_class: str, dtype_argument: str) -> str:
    return f'''```python
import torch
from PIL import Image
from transformers import AutoProcessor, {auto_class}

repo_id = "{repo_id}"
model = {auto_class}.from_pretrained(
    repo_id, trust_remote_code=True, {dtype_argument}=torch.bfloat16, device_map="auto"
)
processor = AutoProcessor.from_pretrained(repo_id, trust_remote_code=True)

image = Image.open("example.jpg")
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What is in this image?"}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device, torch.bfloat16)
output = model.generate(**inputs, max_new_tokens=128, do_sample=False)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```'''


def _self_questioning_snippet() -> str:
    return """```python
# model, processor and image as above
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True, generation_role="vuser")
inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device, torch.bfloat16)
output = model.generate(**inputs, max_new_tokens=64, do_sample=True, temperature=1.2, top_k=300, top_p=0.95)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))  # a question
```"""


def _lmms_eval_snippet(repo_id: str) -> str:
    return f"""With the sqllava code installed with its lmms-eval extra (`pip install -e ".[lmms]"` in a sqllava checkout),
lmms-eval runs the model by name (`sqllava`); the results file is written under `--output_path`.

```bash
lmms-eval --model sqllava --model_args pretrained={repo_id},dtype=bfloat16 \\
    --tasks vqav2_val,gqa,pope,scienceqa_img,textvqa_val,mmbench_en_dev --batch_size 8 \\
    --output_path lmms-eval-results --log_samples
```"""


def _vllm_snippet(repo_id: str) -> str:
    """vLLM (>= 0.32) through its Transformers backend: the OpenAI-compatible server and an offline `LLM`, with the
    tokenization the model was trained with (the repo's tokenizer class) and its chat template."""
    return f"""vLLM runs the model through its Transformers backend (the repo's own code, so `--trust-remote-code`);
prompts are tokenized exactly as in training and a plain OpenAI chat request with an image works:

```bash
pip install "vllm>=0.32"
python -m vllm.entrypoints.openai.api_server --model {repo_id} --model-impl transformers --trust-remote-code \\
    --host 127.0.0.1 --port 8000
```

```python
import base64
from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="EMPTY")
image = "data:image/jpeg;base64," + base64.b64encode(open("example.jpg", "rb").read()).decode()
messages = [{{"role": "user", "content": [
    {{"type": "image_url", "image_url": {{"url": image}}}}, {{"type": "text", "text": "What is in this image?"}}]}}]
answer = client.chat.completions.create(model="{repo_id}", messages=messages, temperature=0, max_tokens=128)
print(answer.choices[0].message.content)
# Self-questioning: the chat template's `generation_role` through vLLM's `chat_template_kwargs`.
question = client.chat.completions.create(
    model="{repo_id}", messages=messages, temperature=1.2, top_p=0.95, max_tokens=64,
    extra_body={{"top_k": 300, "chat_template_kwargs": {{"generation_role": "vuser"}}}},
)
print(question.choices[0].message.content)
```

Offline, in a script (vLLM starts worker processes: keep the `__main__` guard):

```python
from PIL import Image
from vllm import LLM, SamplingParams

if __name__ == "__main__":
    llm = LLM(model="{repo_id}", model_impl="transformers", trust_remote_code=True)
    messages = [{{"role": "user", "content": [
        {{"type": "image_pil", "image_pil": Image.open("example.jpg")}},
        {{"type": "text", "text": "What is in this image?"}}]}}]
    output = llm.chat(messages, SamplingParams(temperature=0, max_tokens=128))
    print(output[0].outputs[0].text)
```"""


def _cell(value: Any) -> str:
    """A Markdown table cell: readable numbers, lists joined, pipes escaped."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = f"{value:.4g}" if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5) else f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(str(item) for item in value)
    elif value is None:
        text = "-"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _config_tables(training_config: Mapping[str, Any]) -> str:
    # One table per stage when every top-level value is a mapping (pretrain/finetune), else one table.
    if all(isinstance(value, Mapping) for value in training_config.values()):
        return "\n\n".join(
            f"### {stage}\n\n" + _key_value_table(_flatten(config), "Setting")
            for stage, config in training_config.items()
        )
    return _key_value_table(_flatten(training_config), "Setting")


def _key_value_table(rows: Mapping[str, Any], key_header: str) -> str:
    lines = [f"| {key_header} | Value |", "| --- | --- |"]
    lines += [f"| `{_cell(key)}` | {_cell(value)} |" for key, value in rows.items()]
    return "\n".join(lines)


def _figures_table(figures: Mapping[str, Any]) -> str:
    lines = ["| Figure | Value |", "| --- | --- |"]
    lines += [f"| {FIGURE_LABELS.get(key, key)} | {_cell(value)} |" for key, value in _flatten(figures).items()]
    return "\n".join(lines)


def _eval_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for benchmark, result in metrics.items():
        if isinstance(result, numbers.Real) and not isinstance(result, bool):
            result = {"score": result}
        if not isinstance(result, Mapping):
            raise TypeError(
                f"metrics[{benchmark!r}]={result!r} must be a number or a mapping of metric names to numbers "
                "(optionally with 'dataset', 'split', 'config')."
            )
        description = {key: result.get(key) for key in _EVAL_DESCRIPTION_KEYS}
        scores = {key: value for key, value in result.items() if key not in _EVAL_DESCRIPTION_KEYS}
        if not scores:
            raise ValueError(f"metrics[{benchmark!r}]={dict(result)!r} holds no score; add e.g. {{'accuracy': 63.2}}.")
        for metric, value in scores.items():
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise TypeError(f"metrics[{benchmark!r}][{metric!r}]={value!r} must be a number.")
            rows.append({"benchmark": str(benchmark), "metric": str(metric), "value": float(value), **description})
    return rows


def _eval_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| Benchmark | Split | Metric | Value |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {_cell(row['benchmark'])} | {_cell(row['split'])} | {_cell(row['metric'])} | {_cell(row['value'])} |"
        for row in rows
    ]
    return "\n".join(lines)
