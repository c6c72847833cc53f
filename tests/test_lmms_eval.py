"""The lmms-eval model `sqllava` (recipes/eval/lmms.py), in process and through the real `lmms-eval` CLI.

lmms-eval is an optional extra (`pip install -e ".[lmms]"`): without it this module skips. CI's lmms job installs
it and sets `SQLLAVA_REQUIRE_LMMS_EVAL=1`, which turns the skip into a failure. Everything runs offline on a tiny
random SQ-LLaVA saved to a temporary folder and on a task written by the test over a dataset saved with `datasets`.
"""

from __future__ import annotations

import copy
import glob
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

try:
    import lmms_eval  # noqa: F401
except ImportError as error:
    if os.environ.get("SQLLAVA_REQUIRE_LMMS_EVAL") == "1":
        raise RuntimeError(
            f"SQLLAVA_REQUIRE_LMMS_EVAL=1 but lmms_eval cannot be imported ({error}): pip install -e '.[lmms]'"
        ) from error
    pytest.skip(
        f"lmms-eval is not installed ({error}); pip install -e '.[lmms]' to run these tests (CI's lmms job does)",
        allow_module_level=True,
    )

from lmms_eval.api.instance import Instance
from PIL import Image

from processing import LLAVA_SYSTEM_PROMPT
from recipes.eval.lmms import SQLlavaLmmsEvalModel

VQA_SUFFIX = "\nAnswer the question using a single word or phrase."


# ------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny random SQ-LLaVA exported as `save_pretrained` writes it (what `--model_args pretrained=` names)."""
    from recipes.tiny import build_tiny_model, build_tiny_processor

    folder = tmp_path_factory.mktemp("sqllava-tiny")
    tokenizer = copy.deepcopy(tiny_tokenizer)
    build_tiny_model(tokenizer).save_pretrained(folder)
    build_tiny_processor(tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(model_dir):
    """The same model and processor loaded on their own: the references use them one request at a time."""
    from recipes.loading import load_model_and_processor

    return load_model_and_processor(model_dir, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def lm(model_dir):
    return SQLlavaLmmsEvalModel(pretrained=str(model_dir), device="cpu", dtype="float32", batch_size="2")


def _images() -> list:
    # Different sizes and aspect ratios: pad-to-square and the resize run on each.
    return [
        Image.new("RGB", (56, 56), (200, 30, 30)),
        Image.new("RGB", (80, 40), (30, 160, 60)),
        Image.new("RGB", (40, 72), (20, 40, 220)),
        Image.new("RGB", (64, 48), (230, 210, 40)),
    ]


QUESTIONS = [
    "What colour is the image?",
    "How many squares are there in the picture, counting the small ones?",
    "Where?",
    "Is the shape on the left or on the right of the image?",
]


def _request(request_type: str, arguments: tuple, doc_id: int, task: str = "toy") -> Instance:
    return Instance(request_type, arguments, idx=0, metadata={"task": task, "doc_id": doc_id, "repeats": 1})


def _doc_to_visual(doc):
    return [] if doc["image"] is None else [doc["image"]]


def _reference_prompt(processor, text: str, num_images: int) -> str:
    content = [{"type": "image"}] * num_images + [{"type": "text", "text": text}]
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def _reference_raw_answer(reference, text: str, images: list, max_new_tokens: int) -> str:
    """Greedy `model.generate` on one unpadded prompt, decoded (the README's usage)."""
    model, processor = reference
    inputs = processor(
        text=_reference_prompt(processor, text, len(images)), images=images or None, return_tensors="pt"
    )
    with torch.inference_mode():
        output = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    return processor.decode(output[0, inputs["input_ids"].shape[1] :])


def _reference_answer(reference, text: str, images: list, max_new_tokens: int, until=("\n\n",)) -> str:
    raw = _reference_raw_answer(reference, text, images, max_new_tokens)
    for stop in until:
        raw = raw.split(stop, 1)[0]
    return reference[1].post_process_generation(raw)


def _reference_loglikelihood(reference, prompt: str, continuation: str, images: list) -> tuple[float, bool]:
    """log P(continuation | prompt) from the model's float64 logits on the unpadded sequence."""
    model, processor = reference
    model64 = copy.deepcopy(model).double()
    full = processor(text=prompt + continuation, images=images or None, return_tensors="pt")
    context = processor(text=prompt, images=images or None)["input_ids"][0]
    ids = full["input_ids"][0]
    start = max(len(context), 1)
    assert ids[:start].tolist() == list(context)[:start], "the prompt's tokens must prefix the full sequence"
    pixel_values = full["pixel_values"].double() if "pixel_values" in full else None
    with torch.no_grad():
        logits = model64(input_ids=full["input_ids"], pixel_values=pixel_values).logits[0]
    log_probs = torch.log_softmax(logits, dim=-1)
    targets = ids[start:]
    total = sum(log_probs[t - 1, ids[t]].item() for t in range(start, len(ids)))
    greedy = bool((log_probs[start - 1 : len(ids) - 1].argmax(-1) == targets).all())
    return total, greedy


# ---------------------------------------------------------------------------------------------------- registry
def test_entry_point_registers_the_model():
    """lmms-eval's registry finds `sqllava` through this distribution's `lmms_eval.models` entry point."""
    entries = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="lmms_eval.models")}
    assert entries.get("sqllava") == "recipes.eval.lmms:lmms_eval_models", (
        f"entry points of group lmms_eval.models: {entries}; reinstall with pip install -e '.[lmms]'"
    )
    from lmms_eval.models import get_model

    assert get_model("sqllava") is SQLlavaLmmsEvalModel


# ------------------------------------------------------------------------------------------------------ prompts
def test_prompt_is_vicuna_v1_with_one_bos(lm):
    """One user turn rendered as LLaVA-1.5's conv v1 (image first, then the task text), tokenized with one BOS."""
    tokenizer = lm.processor.tokenizer
    question = "What is it?" + VQA_SUFFIX
    prompt = lm.build_prompt(question, 1)
    expected = f"{LLAVA_SYSTEM_PROMPT} USER: <image>\n{question} ASSISTANT:"
    assert prompt.removeprefix(tokenizer.bos_token) == expected
    assert lm.build_prompt("Describe <image> here.", 1).endswith("USER: Describe <image> here. ASSISTANT:")
    assert lm.build_prompt("No image.", 0).endswith("USER: No image. ASSISTANT:")
    ids = lm.processor(text=prompt, images=_images()[0])["input_ids"][0]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert ids.count(lm.processor.image_token_id) == lm.processor.image_seq_length


def test_system_prompt_argument_replaces_the_default(model_dir, tmp_path):
    """`system_prompt=` (text, or a file holding it) replaces the template's LLaVA system prompt."""
    path = tmp_path / "system.txt"
    path.write_text("Answer briefly.\n")
    for value in ("Answer briefly.", str(path)):
        lm = SQLlavaLmmsEvalModel(pretrained=str(model_dir), device="cpu", system_prompt=value)
        prompt = lm.build_prompt("Q?", 1).removeprefix(lm.processor.tokenizer.bos_token)
        assert prompt == "Answer briefly. USER: <image>\nQ? ASSISTANT:"


# --------------------------------------------------------------------------------------------------- generation
def test_generate_until_batches_and_keeps_request_order(lm, reference):
    """Batched answers (grouped by generation settings, image and text-only requests mixed, left padding) equal
    greedy `model.generate` on each prompt alone, and come back in request order."""
    images = _images()
    docs = [{"image": image, "question": q} for image, q in zip(images, QUESTIONS)]
    docs.append({"image": None, "question": "Say something without an image."})
    lm.task_dict = {"toy": {"test": docs}}
    settings = [{"max_new_tokens": 5, "until": ["\n\n"]}, {"max_new_tokens": 3, "temperature": 0, "do_sample": False}]
    requests = [
        _request("generate_until", (doc["question"], dict(settings[i % 2]), _doc_to_visual, i, "toy", "test"), i)
        for i, doc in enumerate(docs)
    ]
    answers = lm.generate_until(requests)
    expected = [
        _reference_answer(reference, doc["question"], _doc_to_visual(doc), settings[i % 2]["max_new_tokens"])
        for i, doc in enumerate(docs)
    ]
    assert answers == expected
    assert len(set(answers)) > 1, "the references should differ between requests for the order check to mean anything"


def test_until_cuts_the_answer(lm, reference):
    """A stop string from `until` ends the answer before its first occurrence."""
    image = _images()[1]
    lm.task_dict = {"toy": {"test": [{"image": image, "question": QUESTIONS[1]}]}}
    raw = reference[1].post_process_generation(_reference_raw_answer(reference, QUESTIONS[1], [image], 8))
    assert len(raw) >= 4, raw
    stop = raw[2:4]
    request = _request(
        "generate_until", (QUESTIONS[1], {"max_new_tokens": 8, "until": stop}, _doc_to_visual, 0, "toy", "test"), 0
    )
    assert lm.generate_until([request]) == [raw.split(stop, 1)[0].strip()]


@pytest.mark.parametrize(
    ("gen_kwargs", "expected"),
    [
        ({}, {"max_new_tokens": 1024, "num_beams": 1, "do_sample": False}),
        (
            {"max_new_tokens": 16, "temperature": 0, "do_sample": True},
            {"max_new_tokens": 16, "num_beams": 1, "do_sample": False},
        ),
        (
            {"temperature": 0.7, "top_p": 0.9, "num_beams": 2},
            {"max_new_tokens": 1024, "num_beams": 2, "do_sample": True, "temperature": 0.7, "top_p": 0.9},
        ),
        ({"do_sample": True}, {"max_new_tokens": 1024, "num_beams": 1, "do_sample": True, "temperature": 1.0}),
        (
            {"temperature": 0, "top_p": 1.0, "image_aspect_ratio": "pad"},
            {"max_new_tokens": 1024, "num_beams": 1, "do_sample": False},
        ),
    ],
)
def test_generation_settings_follow_lmms_eval_conventions(lm, gen_kwargs, expected):
    settings, until = lm.generation_settings(gen_kwargs)
    assert settings == expected
    assert until == []


def test_generation_settings_until_forms(lm):
    assert lm.generation_settings({"until": "\n"})[1] == ["\n"]
    assert lm.generation_settings({"until": ["A:", "", "B:"]})[1] == ["A:", "B:"]
    with pytest.raises(TypeError, match="until"):
        lm.generation_settings({"until": 3})


def test_generate_until_multi_round(lm, reference):
    """Round 0 answers the context; later rounds come from the task's doc_to_text until it says terminal."""
    images = _images()
    lm.task_dict = {"toy": {"test": [{"image": images[0], "question": QUESTIONS[0]}]}}
    calls = []

    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        calls.append((list(previous_output), round_idx, previous_round_info))
        if round_idx == 1:
            return [images[2]], QUESTIONS[2], False, previous_output, {"round": 1}
        return None, None, True, previous_output, None

    request = _request(
        "generate_until_multi_round",
        (QUESTIONS[0], {"max_new_tokens": 4}, _doc_to_visual, doc_to_text, 0, "toy", "test"),
        0,
    )
    (outputs,) = lm.generate_until_multi_round([request])
    first = _reference_answer(reference, QUESTIONS[0], [images[0]], 4)
    second = _reference_answer(reference, QUESTIONS[2], [images[2]], 4)
    assert outputs == [first, second]
    assert calls == [([first], 1, None), ([first, second], 2, {"round": 1})]


# ---------------------------------------------------------------------------------------------- loglikelihood
def test_loglikelihood_matches_float64_reference(lm, reference):
    """Batched (right-padded) float32 scores equal log P(continuation | prompt) from float64 logits, with the
    greedy flag; covers a doc_to_target callable, a text-only request and lmms-eval's unconditional ("", x)."""
    model, processor = reference
    images = _images()
    docs = [{"image": image, "question": q, "answer": "red"} for image, q in zip(images, QUESTIONS)]
    docs.append({"image": None, "question": "Pick one.", "answer": "no"})
    lm.task_dict = {"toy": {"test": docs}}

    # A continuation the model would produce greedily: its first two generated tokens, decoded (the decoder drops
    # the first token's leading "▁", which the continuation after "ASSISTANT:" keeps).
    prompt0 = _reference_prompt(processor, QUESTIONS[0], 1)
    inputs = processor(text=prompt0, images=images[0], return_tensors="pt")
    with torch.inference_mode():
        generated = model.generate(**inputs, do_sample=False, max_new_tokens=2)[0, inputs["input_ids"].shape[1] :]
    greedy_continuation = " " + processor.tokenizer.decode(generated)

    cases = [  # (context, continuation or callable, doc_id)
        (QUESTIONS[0], " yes", 0),
        (QUESTIONS[0], " no, it is a large blue square", 0),
        (QUESTIONS[0], greedy_continuation, 0),
        (QUESTIONS[1], lambda doc: " " + doc["answer"], 1),
        (QUESTIONS[3], " B", 3),
        ("Pick one.", " no", 4),
    ]
    requests = [
        _request("loglikelihood", (context, continuation, _doc_to_visual, doc_id, "toy", "test"), doc_id)
        for context, continuation, doc_id in cases
    ]
    requests.append(_request("loglikelihood", ("", "yes"), 0))
    results = lm.loglikelihood(requests)

    expected = []
    for context, continuation, doc_id in cases:
        doc = docs[doc_id]
        continuation = continuation(doc) if callable(continuation) else continuation
        visual = _doc_to_visual(doc)
        expected.append(
            _reference_loglikelihood(
                reference, _reference_prompt(processor, context, len(visual)), continuation, visual
            )
        )
    expected.append(_reference_loglikelihood(reference, "", "yes", []))

    # (negative log-likelihood, is_greedy) in a GenerationResult: see SQLlavaLmmsEvalModel.loglikelihood.
    pairs = [result.text for result in results]
    assert [greedy for _, greedy in pairs] == [greedy for _, greedy in expected]
    assert expected[2][1], f"{greedy_continuation!r} should be the greedy continuation"
    assert not all(greedy for _, greedy in expected)
    for (value, _), (log_likelihood, _) in zip(pairs, expected):
        assert isinstance(value, float) and value > 0
        assert value == pytest.approx(-log_likelihood, abs=1e-4)


# ---------------------------------------------------------------------------------------------------- arguments
def test_invalid_arguments_are_named(model_dir):
    with pytest.raises(ValueError, match="batch_size 'auto'"):
        SQLlavaLmmsEvalModel(pretrained=str(model_dir), batch_size="auto")
    with pytest.raises(TypeError, match="conv_template"):
        SQLlavaLmmsEvalModel(pretrained=str(model_dir), conv_template="vicuna_v1")
    with pytest.raises(ValueError, match="pretrained"):
        SQLlavaLmmsEvalModel()


def test_video_inputs_are_refused(lm):
    lm.task_dict = {"toy": {"test": [{"video": "clip.mp4"}]}}
    request = _request("generate_until", ("Q?", {}, lambda doc: [doc["video"]], 0, "toy", "test"), 0)
    with pytest.raises(ValueError, match="images only"):
        lm.generate_until([request])


def test_foreign_code_needs_trust_remote_code(model_dir, tmp_path):
    """A folder shipping code the installed sqllava does not is refused unless trust_remote_code=true."""
    from recipes.loading import RemoteCodeError

    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    (folder / "modeling_extra.py").write_text("raise SystemExit('this code must not run')\n")
    with pytest.raises(RemoteCodeError, match="modeling_extra.py"):
        SQLlavaLmmsEvalModel(pretrained=str(folder), device="cpu")


# ------------------------------------------------------------------------------------------------ lmms-eval CLI
TASK_YAML = """\
task: {task}
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
doc_to_visual: image
doc_to_text: "{{{{question}}}}{suffix}"
"""
VQA_TASK = """\
output_type: generate_until
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 6
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
CHOICE_TASK = """\
output_type: multiple_choice
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _lmms_eval_command() -> list[str]:
    script = Path(sys.executable).with_name("lmms-eval")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from lmms_eval.cli.dispatch import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def local_tasks(model_dir, reference, tmp_path_factory):
    """A generation task and a multiple-choice task over 3 images saved with `datasets`, with the references:
    `(task folder, answers, expected choice scores)`."""
    import datasets

    processor = reference[1]
    root = tmp_path_factory.mktemp("lmms-tasks")
    images = _images()[:3]
    questions = QUESTIONS[:3]
    answers = [_reference_answer(reference, q + VQA_SUFFIX, [image], 6) for q, image in zip(questions, images)]
    # The first target is the model's own answer: exact_match must come out as exactly 1/3.
    targets = [answers[0], "two", "left"]
    choices = [["yes", "no"], ["red", "green", "blue"], ["a large blue square", "B"]]
    expected_scores = [
        [
            _reference_loglikelihood(reference, _reference_prompt(processor, question, 1), " " + choice, [image])
            for choice in doc_choices
        ]
        for question, image, doc_choices in zip(questions, images, choices)
    ]
    # The model's most likely choice is the label of the first two documents, its least likely that of the third:
    # accuracy is 2/3 when lmms-eval predicts the most likely choice (and 1/3 if the scores' sign were wrong).
    log_likelihoods = [[log_likelihood for log_likelihood, _ in scores] for scores in expected_scores]
    labels = [ll.index(max(ll)) for ll in log_likelihoods[:2]] + [log_likelihoods[2].index(min(log_likelihoods[2]))]
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "choices": datasets.Sequence(datasets.Value("string")),
            "label": datasets.Value("int64"),
        }
    )
    data = {"image": images, "question": questions, "answer": targets, "choices": choices, "label": labels}
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(data, features=features)}).save_to_disk(root / "data")
    tasks = root / "tasks"
    tasks.mkdir()
    suffix = VQA_SUFFIX.replace("\n", "\\n")
    (tasks / "vqa.yaml").write_text(
        TASK_YAML.format(task="sqllava_toy_vqa", data=root / "data", suffix=suffix) + VQA_TASK
    )
    (tasks / "choice.yaml").write_text(
        TASK_YAML.format(task="sqllava_toy_choice", data=root / "data", suffix="") + CHOICE_TASK
    )
    return tasks, answers, expected_scores


def _run_cli_and_check(launcher: list[str], model_dir, local_tasks, tmp_path) -> str:
    """Run lmms-eval on the local tasks and check what it wrote: the logged answers equal greedy `model.generate`,
    the logged choice scores equal the float64 reference, and the metrics in the results file follow from them.
    Returns the command's output."""
    tasks, answers, expected_scores = local_tasks
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf-home"),
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
    )
    out = tmp_path / "out"
    command = launcher + [
        "--model", "sqllava",
        "--model_args", f"pretrained={model_dir},dtype=float32",
        "--tasks", "sqllava_toy_vqa,sqllava_toy_choice",
        "--include_path", str(tasks),
        "--batch_size", "2",
        "--device", "cpu",
        "--output_path", str(out),
        "--log_samples",
    ]  # fmt: skip
    run = subprocess.run(command, check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    log = run.stdout[-4000:] + run.stderr[-4000:]
    assert run.returncode == 0, log
    # The CLI exits 0 even when a task fails: the files it writes are the evidence.
    results_files = glob.glob(str(out / "*" / "*_results.json"))
    assert len(results_files) == 1, log
    results = json.loads(Path(results_files[0]).read_text())

    def samples(task: str) -> list[dict]:
        (path,) = glob.glob(str(out / "*" / f"*_samples_{task}.jsonl"))
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        return sorted(rows, key=lambda row: row["doc_id"])

    vqa = samples("sqllava_toy_vqa")
    assert [row["filtered_resps"] for row in vqa] == answers
    assert results["results"]["sqllava_toy_vqa"]["exact_match,none"] == pytest.approx(1 / 3)

    choice = samples("sqllava_toy_choice")
    assert len(choice) == len(expected_scores)
    for row, expected in zip(choice, expected_scores):
        logged = [(float(value), str(greedy) == "True") for value, greedy in row["filtered_resps"]]
        assert [greedy for _, greedy in logged] == [greedy for _, greedy in expected]
        for (value, _), (log_likelihood, _) in zip(logged, expected):
            assert value == pytest.approx(-log_likelihood, abs=1e-4)
    assert results["results"]["sqllava_toy_choice"]["acc,none"] == pytest.approx(2 / 3)
    return run.stdout + run.stderr


@pytest.mark.slow
def test_lmms_eval_cli_runs_local_tasks(model_dir, local_tasks, tmp_path):
    """`lmms-eval --model sqllava` on a generation task and a multiple-choice task over a local dataset."""
    _run_cli_and_check(_lmms_eval_command(), model_dir, local_tasks, tmp_path)


@pytest.mark.slow
def test_lmms_eval_two_processes_split_the_requests(model_dir, local_tasks, tmp_path):
    """Two processes (torchrun, gloo on CPU; on GPUs `accelerate launch` does the same) each answer part of the
    requests, and the gathered results are the single-process ones."""
    with socket.socket() as probe:  # a free port: other test runs may share the machine
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "lmms_eval",
    ]  # fmt: skip
    output = _run_cli_and_check(launcher, model_dir, local_tasks, tmp_path)
    assert "Running on rank 1" in output, output[-4000:]
