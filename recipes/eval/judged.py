"""LLaVA-Bench-in-the-wild and MM-Vet: open answers graded by a judge model.

- LLaVA-Bench (`llava-bench-in-the-wild/`): `questions.jsonl` + images `images/`, scored with `context.jsonl` and
  `answers_gpt4.jsonl` by the review of LLaVA's `llava/eval/eval_gpt_review_bench.py` + `summarize_gpt_review.py`
  (relative score: the model's mean judge score over GPT-4's, per category and overall).
- MM-Vet (`mm-vet/`): `llava-mm-vet.jsonl` + images `images/`, graded against MM-Vet's `mm-vet.json` as MM-Vet's
  own evaluator does (per capability and total). `submit` writes the `{"v1_<id>": answer}` file of LLaVA's
  `scripts/convert_mmvet_for_eval.py`, which MM-Vet's notebook and online evaluator read.

Both are answered as LLaVA's `model_vqa.py` asks (`"<image>\\n" + text`, up to 1024 new tokens). The judge is any
OpenAI-compatible endpoint the user names (`--judge-url`, `--judge-model`, the key from the environment variable
`--judge-api-key-env`, default `OPENAI_API_KEY`); nothing is sent anywhere without `--judge-url`. The review prompts
and the aggregation are the official ones, in `recipes/eval/judge.py`.
"""

from __future__ import annotations

import json
import os

from recipes.eval.common import (
    Benchmark,
    ScoreResult,
    predictions_and_missing,
    question_key,
    read_json,
    read_jsonl,
    register,
    write_json,
)
from recipes.eval.vqa import llava_question_file


class JudgeRequired(ValueError):
    """Scoring a judged benchmark without naming a judge endpoint."""


def judge_settings(benchmark: str, options: dict) -> dict:
    """The judge keyword arguments of `recipes.eval.judge` from the `score` options, or a clear error."""
    url, model = options.get("judge_url"), options.get("judge_model")
    if not url or not model:
        raise JudgeRequired(
            f"{benchmark} is scored by a judge model (GPT-4 in the papers): pass --judge-url URL (an OpenAI-compatible "
            "endpoint, e.g. https://api.openai.com/v1) and --judge-model NAME; the API key is read from the "
            "environment variable named by --judge-api-key-env (default OPENAI_API_KEY). Nothing is sent anywhere "
            "without --judge-url."
        )
    return {"url": url, "model": model, "api_key_env": options.get("judge_api_key_env") or "OPENAI_API_KEY"}


def read_cache(path: str | None, judge_model: str) -> list[dict]:
    """The verdicts `judge_model` gave earlier (one JSON object per line), so an interrupted scoring does not pay
    twice. Another judge's verdicts are not reused: a different judge gives different scores."""
    if not path or not os.path.isfile(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a kill: that verdict is asked again, the later ones kept
                continue
            if isinstance(row, dict) and row.get("judge_model") == judge_model:
                rows.append(row)
    return rows


def _append(path: str | None, record: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a+b") as f:
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":  # a torn last line (a kill mid-write): the next verdict starts its own line
                    f.write(b"\n")
            f.write((json.dumps(record) + "\n").encode("utf-8"))


def _judged_result(result: dict, answered: list, missing: list, missing_policy: str) -> ScoreResult:
    """A judge metric's `compute` output as a `ScoreResult`; the judge's reviews travel in `extra`."""
    return ScoreResult(
        metrics=dict(result["metrics"]),
        per_question={str(k): v for k, v in result["per_question"].items()},
        num_questions=len(answered) + len(missing),
        num_answered=len(answered),
        num_missing=len(missing),
        missing_policy=missing_policy,
        notes=list(result["notes"]),
        extra={"reviews": result["reviews"]},
    )


class Judged(Benchmark):
    """A judged benchmark: `folder_name/question_file_name` + `folder_name/images/` under the eval root."""

    splits = ("test",)
    default_split = "test"
    scored_splits = ("test",)
    max_new_tokens = 1024  # model_vqa.py
    needs_judge = True
    folder_name = ""
    question_file_name = ""

    def folder(self, root):
        return os.path.join(root, self.folder_name)

    def question_file(self, root, split):
        return os.path.join(self.folder(root), self.question_file_name)

    def image_folder(self, root, split):
        return os.path.join(self.folder(root), "images")

    def load_questions(self, root, split, question_file=None, **options):
        return llava_question_file(question_file or self.question_file(root, split), f"the {self.title} questions")


@register
class LLaVABench(Judged):
    name = "llava_bench"
    title = "LLaVA-Bench-in-the-wild"
    headline = "relative_score"
    metric_label = "relative score (all)"
    folder_name = "llava-bench-in-the-wild"
    question_file_name = "questions.jsonl"

    def score(self, root, split, questions, answers, **options):
        settings = judge_settings(self.name, options)
        from recipes.eval import judge

        contexts = [row for _, row in read_jsonl(os.path.join(self.folder(root), "context.jsonl"), "context.jsonl")]
        gpt4 = {
            question_key(row["question_id"]): row
            for _, row in read_jsonl(os.path.join(self.folder(root), "answers_gpt4.jsonl"), "answers_gpt4.jsonl")
        }
        answered, missing = predictions_and_missing(questions, answers)
        lacking = [q.source for q in answered if q.key not in gpt4]
        if lacking:
            raise ValueError(f"answers_gpt4.jsonl has no GPT-4 answer for {lacking[0]}.")
        # LLaVA's review pairs questions, GPT-4 answers and model answers line by line: here they are aligned by id.
        cache = options.get("judge_cache")
        # A saved verdict is reused only for the very answer it judged (the answers may have been regenerated since).
        texts = {q.info["question_id"]: answers[q.key]["text"] for q in answered}
        cached = [
            r
            for r in read_cache(cache, settings["model"])
            if texts.get(r.get("question_id"), object()) == r.get("answer_text")
        ]
        # Ids as the question file writes them (another engine may have written 5 as "5").
        result = judge.review_llava_bench(
            [q.info for q in answered],
            contexts,
            [{**gpt4[q.key], "question_id": q.info["question_id"]} for q in answered],
            [{**answers[q.key], "question_id": q.info["question_id"]} for q in answered],
            cached_reviews=cached,
            on_review=lambda review: _append(
                cache, {**review, "answer_text": texts[review["question_id"]], "judge_model": settings["model"]}
            ),
            **settings,
        )
        return _judged_result(result, answered, missing, missing_policy="excluded")


@register
class MMVet(Judged):
    name = "mmvet"
    title = "MM-Vet"
    submit_splits = ("test",)
    headline = "total"
    metric_label = "total score"
    folder_name = "mm-vet"
    question_file_name = "llava-mm-vet.jsonl"

    def score(self, root, split, questions, answers, **options):
        settings = judge_settings(self.name, options)
        from recipes.eval import judge

        samples = read_json(os.path.join(self.folder(root), "mm-vet.json"), "MM-Vet's mm-vet.json")
        answered, missing = predictions_and_missing(questions, answers)
        # MM-Vet's evaluator grades every sample of mm-vet.json: a question without an answer is graded as "".
        cache = options.get("judge_cache")
        results = mmvet_results(questions, answers)
        # A saved grade is reused only for the very answer it graded.
        cached = {
            row["id"]: row["grade"]
            for row in read_cache(cache, settings["model"])
            if "grade" in row and row.get("id") in results and results[row["id"]] == row.get("answer_text")
        }
        result = judge.grade_mmvet(
            samples,
            results,
            cached_grades=cached,
            on_grade=lambda sample_id, grade: _append(
                cache,
                {"id": sample_id, "grade": grade, "answer_text": results[sample_id], "judge_model": settings["model"]},
            ),
            **settings,
        )
        return _judged_result(result, answered, missing, missing_policy="wrong")

    def write_submission(self, root, split, questions, answers, output):
        results = mmvet_results(questions, answers, fill_missing=False)
        write_json(output, results, indent=2)
        return {"questions": len(questions), "answered": len(results)}


def mmvet_results(questions, answers, fill_missing: bool = True) -> dict[str, str]:
    """`{"v1_<question_id>": answer}`, the file LLaVA's `convert_mmvet_for_eval.py` writes for MM-Vet's grader."""
    results = {}
    for q in questions:
        if q.key in answers:
            results[f"v1_{q.row['question_id']}"] = answers[q.key]["text"]
        elif fill_missing:
            results[f"v1_{q.row['question_id']}"] = ""
    return results
