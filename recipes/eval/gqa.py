"""GQA test-dev balanced: `gqa/llava_gqa_testdev_balanced.jsonl` + images `gqa/data/images/`.

Scored against the official `gqa/data/testdev_balanced_questions.json` (GQA's `eval.py` accuracy over the balanced
questions, after LLaVA's `scripts/convert_gqa_for_eval.py` turned each answer into `text.rstrip('.').lower()`: both
inside the `gqa` metric), with eval.py's `binary` / `open` breakdown (`accuracy_binary`, `accuracy_open`) where the
questions carry their structural type. `submit` writes `testdev_balanced_predictions.json` exactly as that script does, for
anyone who wants to run GQA's own `eval.py` on it.
"""

from __future__ import annotations

import os

from recipes.eval.common import Benchmark, question_key, read_json, register, write_json
from recipes.eval.vqa import accuracy_result, llava_question_file


@register
class GQA(Benchmark):
    name = "gqa"
    title = "GQA"
    splits = ("testdev_balanced",)
    default_split = "testdev_balanced"
    scored_splits = ("testdev_balanced",)
    submit_splits = ("testdev_balanced",)

    def question_file(self, root, split):
        return os.path.join(root, "gqa", "llava_gqa_testdev_balanced.jsonl")

    def image_folder(self, root, split):
        return os.path.join(root, "gqa", "data", "images")

    def load_questions(self, root, split, question_file=None, **options):
        return llava_question_file(question_file or self.question_file(root, split), "the GQA questions")

    def score(self, root, split, questions, answers, **options):
        path = os.path.join(root, "gqa", "data", "testdev_balanced_questions.json")
        official = read_json(path, "GQA's testdev_balanced_questions.json")
        if not isinstance(official, dict):
            raise TypeError(f"{path} is a {type(official).__name__}; GQA's question files map id -> question.")
        official = {question_key(k): v for k, v in official.items()}
        unknown = [q.source for q in questions if q.key not in official]
        if unknown:
            raise ValueError(f"{len(unknown)} question(s) are not in {path}, first {unknown[0]}.")
        # GQA's eval.py accuracy counts the balanced questions (all of testdev_balanced).
        balanced = [q for q in questions if official[q.key].get("isBalanced", True)]
        references = {q.key: official[q.key]["answer"] for q in balanced}
        result = accuracy_result(
            "gqa",
            balanced,
            answers,
            references,
            missing_note="GQA's eval.py stops when a question has no prediction; here missing answers score 0.",
            # eval.py's `binary` and `open`: a question is open when its structural type is "query".
            groups={q.key: _answer_kind(official[q.key]) for q in balanced},
        )
        if len(balanced) < len(questions):
            result.notes.append(f"{len(questions) - len(balanced)} unbalanced question(s) left out, as eval.py does.")
        return result

    def write_submission(self, root, split, questions, answers, output):
        predictions = [
            {"questionId": row["question_id"], "prediction": row["text"].rstrip(".").lower()}
            for row in (answers[q.key] for q in questions if q.key in answers)
        ]
        write_json(output, predictions, indent=None)
        return {"questions": len(questions), "answered": len(predictions)}


def _answer_kind(question: dict) -> str | None:
    """GQA eval.py's answer type of a question: "open" for structural type "query", else "binary"."""
    structural = (question.get("types") or {}).get("structural")
    if structural is None:
        return None
    return "open" if structural == "query" else "binary"
