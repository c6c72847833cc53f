"""ScienceQA test: `scienceqa/llava_test_CQM-A.json` + images `scienceqa/images/test/`, scored with the official
`scienceqa/problems.json` and `scienceqa/pid_splits.json`.

Prompts as LLaVA's `model_vqa_science.py --single-pred-prompt` builds them: the first human turn without `<image>`,
stripped, then (for a question with an image) `<image>\\n` in front, and "\\nAnswer with the option's letter from
the given choices directly." after; the answer row's `prompt` is that same text (with `<image>\\n`). Questions
without an image are asked as text. Scored as `llava/eval/eval_science_qa.py` scores: over every problem of the test
split, a missing answer being "FAILED" (wrong); `img_accuracy` (the paper's SQA-IMG) over the problems with an image.
"""

from __future__ import annotations

import os

from recipes.eval.common import (
    MULTIPLE_CHOICE_SUFFIX,
    Benchmark,
    Question,
    ScoreResult,
    compute_metric,
    question_key,
    read_json,
    register,
    require_fields,
    require_str,
)


@register
class ScienceQA(Benchmark):
    name = "scienceqa"
    title = "ScienceQA-IMG"
    splits = ("test",)
    default_split = "test"
    scored_splits = ("test",)
    max_new_tokens = 1024  # model_vqa_science.py
    headline = "img_accuracy"
    metric_label = "IMG accuracy"

    def question_file(self, root, split):
        return os.path.join(root, "scienceqa", "llava_test_CQM-A.json")

    def image_folder(self, root, split):
        return os.path.join(root, "scienceqa", "images", split)

    def load_questions(self, root, split, question_file=None, **options):
        path = question_file or self.question_file(root, split)
        rows = read_json(path, "the ScienceQA questions (LLaVA's llava_test_CQM-A.json)")
        if not isinstance(rows, list):
            raise TypeError(f"{path} is a {type(rows).__name__}; llava_test_CQM-A.json is a JSON list.")
        questions = []
        for i, row in enumerate(rows):
            where = f"{path}[{i}]"
            require_fields(row, ("id", "conversations"), where)
            turns = row["conversations"]
            if not isinstance(turns, list) or not turns or not isinstance(turns[0], dict) or "value" not in turns[0]:
                raise ValueError(f"{where}: 'conversations' must start with a human turn {{'from', 'value'}}.")
            qs = require_str(turns[0]["value"], "conversations[0].value", where).replace("<image>", "").strip()
            text = qs + "\n" + MULTIPLE_CHOICE_SUFFIX
            # model_vqa_science.py asks with an image when the record has an "image" key at all.
            has_image = "image" in row
            image = require_str(row["image"], "image", where) if has_image else None
            questions.append(
                Question(
                    key=question_key(row["id"]),
                    text=text,
                    image=image,
                    row={"question_id": row["id"], "prompt": ("<image>\n" + text) if has_image else text},
                    source=where,
                    info={"has_image": has_image},
                )
            )
        return questions

    def score(self, root, split, questions, answers, **options):
        problems_path = os.path.join(root, "scienceqa", "problems.json")
        splits_path = os.path.join(root, "scienceqa", "pid_splits.json")
        problems = read_json(problems_path, "ScienceQA's problems.json")
        pid_splits = read_json(splits_path, "ScienceQA's pid_splits.json")
        if not isinstance(pid_splits, dict) or split not in pid_splits:
            raise ValueError(f"{splits_path} has no {split!r} split.")
        by_key = {q.key: q for q in questions}
        pids = [question_key(pid) for pid in pid_splits[split]]
        missing_problems = [pid for pid in pids if pid not in problems]
        if missing_problems:
            raise ValueError(f"{problems_path} has no problem {missing_problems[0]!r} of the {split} split.")
        predictions, references, choices, has_image, keys = [], [], [], [], []
        num_missing = 0
        for pid in pids:
            problem = problems[pid]
            require_fields(problem, ("answer", "choices"), f"{problems_path}: {pid}")
            if pid in answers:
                predictions.append(answers[pid]["text"])
            else:
                predictions.append("FAILED")  # what eval_science_qa.py substitutes for a missing prediction
                num_missing += 1
            references.append(problem["answer"])
            choices.append(problem["choices"])
            # The question file says whether the question is asked with an image (eval_science_qa.py reads the
            # "<image>" of the answer's prompt, which LLaVA writes exactly then).
            has_image.append(by_key[pid].info["has_image"] if pid in by_key else bool(problem.get("image")))
            keys.append(pid)
        result = compute_metric("scienceqa", predictions, references, choices=choices, has_image=has_image)
        notes = []
        not_in_split = len(set(by_key) - set(pids))
        if not_in_split:
            notes.append(f"{not_in_split} question(s) of the question file are not in the {split} split: not scored.")
        if num_missing:
            notes.append(
                "eval_science_qa.py files a missing answer of an image question under text-only (its prompt is "
                "'Unknown'); here it counts as a wrong IMG answer."
            )
        return ScoreResult(
            metrics={"accuracy": result["accuracy"], "img_accuracy": result["img_accuracy"]},
            per_question={k: float(s) for k, s in zip(keys, result["per_question"])},
            num_questions=len(pids),
            num_answered=len(pids) - num_missing,
            num_missing=num_missing,
            missing_policy="wrong",
            notes=notes,
        )
