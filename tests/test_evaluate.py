"""recipes/evaluate.py: batched greedy answering of LLaVA question files, resume, answers format, scoring, CLI.

A tiny random model is saved to a folder and loaded back the way users load checkpoints (`trust_remote_code=True`);
its answers are gibberish, so the tests check the machinery (prompts, padding, files, resume, scores computed by hand
from the written answers), not the quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
ANSWER_KEYS = {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer, tiny_processor):
    from recipes.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("tiny-sqllava")
    build_tiny_model(tiny_tokenizer).save_pretrained(path)
    tiny_processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def loaded(model_dir):
    from recipes.loading import load_model_and_processor

    return load_model_and_processor(model_dir, device="cpu")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from recipes.synthetic import generate_shapes_dataset

    # 4 held-out images x 3 questions = 12 questions with single-string answers.
    return generate_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=0, num_eval=4, seed=0)


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


class SimulatedKill(Exception):
    pass


class GenerateSpy:
    """Wraps `model.generate`, records each call's inputs, and can fail on a given call (a simulated kill).

    Before failing it reads `watch_file` from disk: what a killed process (no close, no flush) would leave behind.
    """

    def __init__(self, generate, fail_on_call: int | None = None, watch_file=None):
        self.generate = generate
        self.calls: list[dict] = []
        self.fail_on_call = fail_on_call
        self.watch_file = watch_file
        self.on_disk_at_failure = None

    def __call__(self, **kwargs):
        if self.fail_on_call is not None and len(self.calls) + 1 == self.fail_on_call:
            with open(self.watch_file, "rb") as f:
                self.on_disk_at_failure = f.read()
            raise SimulatedKill("simulated interruption")
        self.calls.append({k: (v.clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()})
        return self.generate(**kwargs)


def test_build_prompt_is_llava_single_turn_with_short_answer_suffix(tiny_processor):
    """The prompt is `<s>` + the LLaVA-1.5 system prompt + `USER: <image>\\n` question + suffix + ` ASSISTANT:`,
    suffix once."""
    from processing import LLAVA_SYSTEM_PROMPT
    from recipes.evaluate import SHORT_ANSWER_SUFFIX, build_prompt

    expected = f"<s>{LLAVA_SYSTEM_PROMPT} USER: <image>\nWhat is red?\n{SHORT_ANSWER_SUFFIX} ASSISTANT:"
    assert build_prompt(tiny_processor, "What is red?", answer_suffix=SHORT_ANSWER_SUFFIX) == expected
    # LLaVA's question files already end with the suffix (and some carry <image>): neither is doubled.
    already = f"<image>\nWhat is red?\n{SHORT_ANSWER_SUFFIX}"
    assert build_prompt(tiny_processor, already, answer_suffix=SHORT_ANSWER_SUFFIX) == expected
    plain = f"<s>{LLAVA_SYSTEM_PROMPT} USER: <image>\nWhat is red? ASSISTANT:"
    assert build_prompt(tiny_processor, "What is red?") == plain
    assert build_prompt(tiny_processor, "Hi?", has_image=False) == f"<s>{LLAVA_SYSTEM_PROMPT} USER: Hi? ASSISTANT:"


def test_end_to_end_writes_llava_answers_with_left_padded_batches(loaded, shapes, tmp_path, monkeypatch):
    """Every question is answered once in LLaVA's answer format; batches are left-padded greedy generations."""
    from recipes.evaluate import evaluate_model, load_questions

    model, processor = loaded
    questions = load_questions(shapes["eval"])
    # A text-only question too (no `image`): it must go in a batch of its own, without pixel values.
    questions.append({"question_id": "text-only", "text": "How many sides does a square have?"})
    spy = GenerateSpy(model.generate)
    monkeypatch.setattr(model, "generate", spy)
    answers_file = tmp_path / "answers.jsonl"
    result = evaluate_model(
        model,
        processor,
        questions,
        answers_file,
        image_folder=shapes["image_folder"],
        batch_size=5,
        max_new_tokens=3,
        short_answer=True,
        model_id="tiny",
        progress=False,
    )
    rows = read_jsonl(answers_file)
    assert [r["question_id"] for r in rows] == [q["question_id"] for q in questions]
    for row, question in zip(rows, questions):
        assert set(row) == ANSWER_KEYS
        assert row["prompt"] == question["text"] and row["model_id"] == "tiny" and row["metadata"] == {}
        assert isinstance(row["text"], str) and "</s>" not in row["text"]
    assert len({r["answer_id"] for r in rows}) == len(rows)
    assert result["num_generated"] == 13 and result["num_resumed"] == 0 and result["scores"] is None
    assert result["images_per_second"] > 0

    # 12 image questions in batches of 5, 5, 2, then the text-only one alone.
    assert [len(c["input_ids"]) for c in spy.calls] == [5, 5, 2, 1]
    assert all("pixel_values" in c for c in spy.calls[:3]) and "pixel_values" not in spy.calls[3]
    for call in spy.calls:
        assert call["do_sample"] is False and call["max_new_tokens"] == 3
        mask = call["attention_mask"]
        # Left padding: every row ends with real tokens, padding (if any) is at the start only.
        assert bool(mask[:, -1].all())
        assert bool((mask.cummax(dim=1).values == mask).all())
        for ids in call["input_ids"]:
            prompt = processor.tokenizer.decode(ids, skip_special_tokens=True)
            assert prompt.rstrip().endswith("ASSISTANT:")
    first = processor.tokenizer.decode(spy.calls[0]["input_ids"][0], skip_special_tokens=True)
    assert "Answer the question using a single word or phrase." in first


def test_batched_answers_equal_unbatched(loaded, shapes, tmp_path):
    """Left padding does not change greedy answers: batch size 5 gives the texts of batch size 1."""
    from recipes.evaluate import evaluate_model

    model, processor = loaded
    texts = {}
    for batch_size in (1, 5):
        path = tmp_path / f"answers-{batch_size}.jsonl"
        evaluate_model(model, processor, shapes["eval"], path, batch_size=batch_size, max_new_tokens=4, progress=False)
        texts[batch_size] = [r["text"] for r in read_jsonl(path)]
    assert texts[1] == texts[5]


def test_resume_after_interruption_generates_only_missing_ids(loaded, shapes, tmp_path, monkeypatch):
    """An interrupted run keeps its flushed batches; the rerun answers only the rest, with no duplicates."""
    from recipes.evaluate import evaluate_model

    model, processor = loaded
    answers_file = tmp_path / "answers.jsonl"
    kwargs = {"batch_size": 2, "max_new_tokens": 3, "short_answer": True, "progress": False}
    generate = model.generate
    spy = GenerateSpy(generate, fail_on_call=3, watch_file=answers_file)
    monkeypatch.setattr(model, "generate", spy)
    with pytest.raises(SimulatedKill):
        evaluate_model(model, processor, shapes["eval"], answers_file, **kwargs)
    first = read_jsonl(answers_file)
    assert [r["question_id"] for r in first] == [0, 1, 2, 3]
    # The two finished batches were on disk while the file was still open (flushed per batch, not at close).
    assert spy.on_disk_at_failure.decode().splitlines() == [json.dumps(r) for r in first]
    # A write torn by a kill: the partial last line must be dropped, and its question answered again.
    with open(answers_file, "a") as f:
        f.write('{"question_id": 4, "prompt": "Is th')

    spy = GenerateSpy(generate)
    monkeypatch.setattr(model, "generate", spy)
    result = evaluate_model(model, processor, shapes["eval"], answers_file, **kwargs)
    rows = read_jsonl(answers_file)
    assert [r["question_id"] for r in rows] == list(range(12))
    assert rows[:4] == first  # the earlier answers are kept as written
    assert result["num_resumed"] == 4 and result["num_generated"] == 8
    assert sum(len(c["input_ids"]) for c in spy.calls) == 8

    # A third run has nothing left to generate.
    spy = GenerateSpy(generate)
    monkeypatch.setattr(model, "generate", spy)
    result = evaluate_model(model, processor, shapes["eval"], answers_file, **kwargs)
    assert spy.calls == [] and result["num_generated"] == 0 and result["num_resumed"] == 12
    assert len(read_jsonl(answers_file)) == 12


def _normalize_gqa(text: str) -> str:
    return text.strip().rstrip(".").lower()


def test_scores_match_hand_computation(loaded, shapes, tmp_path):
    """The written answers load in the metrics; exact match and VQA soft accuracy equal hand-computed values."""
    from recipes.evaluate import evaluate_model, load_questions, read_answers, score_answers

    model, processor = loaded
    answers_file = tmp_path / "answers.jsonl"
    evaluate_model(model, processor, shapes["eval"], answers_file, batch_size=6, max_new_tokens=4, progress=False)
    answers = read_answers(answers_file)
    questions = load_questions(shapes["eval"])
    # References made from the written answers for 5 of the 12 questions, so the expected scores are known by hand.
    hits = {0, 3, 4, 8, 11}
    for question in questions:
        text = answers[question["question_id"]]["text"]
        question["answer"] = text.upper() + "." if question["question_id"] in hits else "zebra crossing"
    expected = sum(
        _normalize_gqa(answers[q["question_id"]]["text"]) == _normalize_gqa(q["answer"]) for q in questions
    ) / len(questions)
    assert expected == pytest.approx(5 / 12)
    scores = score_answers(questions, answers, "exact_match")
    assert scores["exact_match"] == pytest.approx(expected) and scores["num_scored"] == 12

    # The same through evaluate_model on a question file: everything is resumed, then scored.
    question_file = tmp_path / "questions.jsonl"
    question_file.write_text("".join(json.dumps(q) + "\n" for q in questions))
    result = evaluate_model(
        model,
        processor,
        question_file,
        answers_file,
        image_folder=shapes["image_folder"],
        metric="exact_match",
        progress=False,
    )
    assert result["num_generated"] == 0 and result["scores"]["exact_match"] == pytest.approx(5 / 12)

    # VQA soft accuracy with 10 human answers, k of which equal the prediction: mean over the 10 leave-one-out
    # subsets of min(1, matches / 3) -> k=0: 0, k=1: 0.3, k=2: 0.6, k=3: 0.9, k>=4: 1.
    def soft_accuracy(k: int) -> float:
        return sum(min(1.0, (k - (i < k)) / 3) for i in range(10)) / 10

    ks = [0, 1, 2, 3, 4, 10, 0, 1, 2, 3, 4, 10]
    for question, k in zip(questions, ks):
        text = answers[question["question_id"]]["text"]
        question["answers"] = [{"answer": text}] * k + [{"answer": "zebra crossing"}] * (10 - k)
    scores = score_answers(questions, answers, "vqa_accuracy", {"normalize_references": True})
    assert scores["accuracy"] == pytest.approx(100 * sum(soft_accuracy(k) for k in ks) / len(ks))
    assert soft_accuracy(1) == pytest.approx(0.3) and soft_accuracy(3) == pytest.approx(0.9)


def test_question_file_errors_name_the_problem(tmp_path):
    from recipes.evaluate import load_questions, reference_of

    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "text": "a"}\n{"question_id": 1, "text": "b"}\n')
    with pytest.raises(ValueError, match="question_id 1 appears twice"):
        load_questions(path)
    path.write_text('{"question_id": 1, "image": "x.png"}\n')
    with pytest.raises(ValueError, match="no 'text'"):
        load_questions(path)
    path.write_text('{"question_id": 1, "text": "a"}\n{"question_id": 2, "te\n')
    with pytest.raises(ValueError, match="q.jsonl:2 is not valid JSON"):
        load_questions(path)
    # Ground-truth fields of the common LLaVA-format files.
    assert reference_of({"answers": [{"answer": "2"}, {"answer": "two"}]}, "vqa_accuracy") == ["2", "two"]
    assert reference_of({"label": "yes"}, "pope") == "yes"
    assert reference_of({"answer": "B"}, "multiple_choice") == "B"
    assert reference_of({"text": "no ground truth"}, "exact_match") is None


def test_cli_runs_as_a_script_and_imports_the_real_evaluate(model_dir, shapes, tmp_path):
    """`python recipes/evaluate.py ...` from another folder: recipes/evaluate.py must not shadow `evaluate`."""
    answers_file = tmp_path / "cli-answers.jsonl"
    results_file = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [
        sys.executable,
        str(REPO_ROOT / "recipes" / "evaluate.py"),
        "--model",
        model_dir,
        "--question-file",
        shapes["eval"],
        "--image-folder",
        shapes["image_folder"],
        "--answers-file",
        str(answers_file),
        "--benchmark",
        "shapes",
        "--batch-size",
        "6",
        "--max-new-tokens",
        "3",
        "--device",
        "cpu",
        "--results-file",
        str(results_file),
        "--no-progress",
    ]
    process = subprocess.run(command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    rows = read_jsonl(answers_file)
    assert len(rows) == 12 and all(set(r) == ANSWER_KEYS for r in rows)
    assert rows[0]["model_id"] == os.path.basename(model_dir)
    result = json.loads(results_file.read_text())
    # The preset scores with exact_match (lenient normalisation); recompute it from the written answers.
    questions = read_jsonl(shapes["eval"])
    by_id = {r["question_id"]: r["text"] for r in rows}

    def lenient(text: str) -> str:
        import re
        import string

        text = text.lower().translate(str.maketrans("", "", string.punctuation))
        return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())

    expected = sum(lenient(by_id[q["question_id"]]) == lenient(q["answer"]) for q in questions) / len(questions)
    assert result["scores"]["exact_match"] == pytest.approx(expected) and result["scores"]["num_scored"] == 12
    assert result["num_generated"] == 12
