"""The synthetic shapes data of `recipes/synthetic.py` (the embedded default and the ablation miniature).

The evaluation root is the folder `generate_shapes_dataset` writes (`eval.jsonl`: `question_id`, `image`, `text`,
`answer`; images relative to it). Questions are asked as they were trained: no answer suffix, `"<image>\\n"` +
question; answers are cleaned by the processor's `post_process_generation` and compared with `exact_match`
(`lenient`: lower case, no punctuation or articles).
"""

from __future__ import annotations

import os

from recipes.eval.common import Benchmark, ScoreResult, compute_metric, predictions_and_missing, register
from recipes.eval.vqa import llava_question_file


@register
class Shapes(Benchmark):
    name = "shapes"
    title = "shapes (synthetic)"
    splits = ("eval",)
    default_split = "eval"
    scored_splits = ("eval",)
    max_new_tokens = 16
    headline = "exact_match"
    metric_label = "exact match (lenient)"
    llava_cleanup = False

    def question_file(self, root, split):
        return os.path.join(root, "eval.jsonl")

    def image_folder(self, root, split):
        return root

    def load_questions(self, root, split, question_file=None, **options):
        questions = llava_question_file(question_file or self.question_file(root, split), "the shapes questions")
        for q in questions:
            # The model sees `<image>\n` + question: an `<image>` already in the text moves to the front.
            q.text = q.text.replace("<image>", "").strip()
        return questions

    def score(self, root, split, questions, answers, **options):
        answered, missing = predictions_and_missing(questions, answers)
        scored = answered + missing
        missing_reference = [q.source for q in scored if "answer" not in q.info]
        if missing_reference:
            raise ValueError(f"{missing_reference[0]} has no 'answer': the shapes questions carry their answer.")
        result = compute_metric(
            "exact_match",
            [answers[q.key]["text"] if q.key in answers else "" for q in scored],
            [str(q.info["answer"]) for q in scored],
            normalization="lenient",
        )
        return ScoreResult(
            metrics={"exact_match": result["exact_match"]},
            per_question={str(q.row["question_id"]): float(s) for q, s in zip(scored, result["per_question"])},
            num_questions=len(scored),
            num_answered=len(answered),
            num_missing=len(missing),
            missing_policy="wrong",
        )
