"""POPE: `pope/llava_pope_test.jsonl` + COCO images `pope/val2014/`, labels in `pope/coco/coco_pope_<split>.json`.

LLaVA's question file holds the three POPE splits one after the other (its `category` field names the split); the
labels live in POPE's own files, one JSON object per line with `label` "yes"/"no". LLaVA's `eval_pope.py` pairs the
k-th answer of a split with the k-th label line of that split, so it is right only for answers written in question
order. Here the k-th question of a split is paired with the k-th label line (checked: same image) and answers are
matched to questions by id, which gives the official pairing whatever order the answers come in. Scores are per
split (accuracy, precision, recall, F1, yes ratio) plus `f1`, the mean F1 the papers report.
"""

from __future__ import annotations

import glob
import os

from recipes.eval.common import (
    Benchmark,
    ScoreResult,
    compute_metric,
    predictions_and_missing,
    read_jsonl,
    register,
    require_fields,
)
from recipes.eval.vqa import llava_question_file

POPE_SPLITS = ("adversarial", "popular", "random")


@register
class POPE(Benchmark):
    name = "pope"
    title = "POPE"
    splits = ("test",)
    default_split = "test"
    scored_splits = ("test",)
    headline = "f1"
    metric_label = "F1 (mean of 3 splits)"

    def question_file(self, root, split):
        return os.path.join(root, "pope", "llava_pope_test.jsonl")

    def image_folder(self, root, split):
        return os.path.join(root, "pope", "val2014")

    def load_questions(self, root, split, question_file=None, **options):
        questions = llava_question_file(question_file or self.question_file(root, split), "the POPE questions")
        for q in questions:
            require_fields(q.info, ("category",), q.source)
        return questions

    def labels(self, root: str, questions) -> dict:
        """`{question key: (split, label)}`: the k-th question of a split gets the k-th line of its label file."""
        label_dir = os.path.join(root, "pope", "coco")
        files = sorted(glob.glob(os.path.join(label_dir, "coco_pope_*.json")))
        if not files:
            raise ValueError(
                f"No POPE label files in {label_dir!r}: expected coco_pope_{{{','.join(POPE_SPLITS)}}}.json from "
                "POPE's output/coco folder."
            )
        by_split: dict[str, list] = {}
        for q in questions:
            by_split.setdefault(q.info["category"], []).append(q)
        labels = {}
        for path in files:
            split = os.path.basename(path)[len("coco_pope_") : -len(".json")]
            rows = read_jsonl(path, f"the POPE {split} labels")
            split_questions = by_split.pop(split, [])
            if len(rows) != len(split_questions):
                raise ValueError(
                    f"{path} has {len(rows)} labels but the question file has {len(split_questions)} questions of "
                    f"category {split!r}."
                )
            for q, (number, row) in zip(split_questions, rows):
                require_fields(row, ("label", "image"), f"{path}:{number}")
                if os.path.basename(str(row["image"])) != os.path.basename(q.image or ""):
                    raise ValueError(
                        f"{path}:{number} labels image {row['image']!r} but the question paired with it "
                        f"({q.source}) shows {q.image!r}: the question file and the label file are not in the same "
                        "order."
                    )
                labels[q.key] = (split, row["label"])
        if by_split:
            raise ValueError(
                f"Questions of categories {sorted(by_split)} have no label file coco_pope_<category>.json in "
                f"{label_dir!r}."
            )
        return labels

    def score(self, root, split, questions, answers, **options):
        labels = self.labels(root, questions)
        answered, missing = predictions_and_missing(questions, answers)
        result = compute_metric(
            "pope",
            [answers[q.key]["text"] for q in answered],
            [labels[q.key][1] for q in answered],
            splits=[labels[q.key][0] for q in answered],
        )
        metrics = {k: v for k, v in result.items() if k != "per_question" and isinstance(v, (int, float))}
        return ScoreResult(
            metrics=metrics,
            per_question={str(q.row["question_id"]): float(s) for q, s in zip(answered, result["per_question"])},
            num_questions=len(answered) + len(missing),
            num_answered=len(answered),
            num_missing=len(missing),
            missing_policy="excluded",
            notes=list(result.get("notes", [])),  # where eval_pope.py would divide by zero
        )
