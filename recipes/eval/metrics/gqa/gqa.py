"""GQA accuracy as LLaVA reports it: `scripts/convert_gqa_for_eval.py`, then the official GQA `eval.py` accuracy.

This is an `evaluate` module loaded by path. `evaluate` copies this single file into its module cache, so it imports
only the standard library, `datasets` and `evaluate`.
"""

from __future__ import annotations

import datasets
import evaluate

_CITATION = """\
@inproceedings{hudson2019gqa,
  title={{GQA}: A New Dataset for Real-World Visual Reasoning and Compositional Question Answering},
  author={Hudson, Drew A and Manning, Christopher D},
  booktitle={CVPR},
  year={2019}
}
"""

_DESCRIPTION = """\
GQA accuracy (test-dev balanced) as LLaVA-1.5 and SQ-LLaVA report it:

1. LLaVA's `scripts/convert_gqa_for_eval.py` turns each answer into `text.rstrip('.').lower()` (trailing periods
   removed, lowercased; surrounding spaces are *not* stripped, so "yes. " stays "yes. ").
2. GQA's `eval.py` (gqadataset.org) gives a balanced question 1 point when that prediction equals the gold `answer`
   string exactly (the gold answer is not normalised), and averages over the balanced questions.

Every question of `testdev_balanced_questions.json` is balanced; pass only balanced questions.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the model's raw answers (the `text` of LLaVA's answer file), one per question.
    references (`list[str]`): the gold `answer` of each question in `testdev_balanced_questions.json`.
Returns:
    accuracy (`float`): fraction of questions answered exactly, in [0, 1].
    per_question (`list[float]`): 1.0 or 0.0 for each question, aligned with `predictions`.
Examples:
    >>> gqa = evaluate.load("recipes/eval/metrics/gqa")
    >>> gqa.compute(predictions=["Yes.", "The left"], references=["yes", "left"])
    {'accuracy': 0.5, 'per_question': [1.0, 0.0]}
"""


def convert_gqa_prediction(text: str) -> str:
    """LLaVA's `convert_gqa_for_eval.py`: `text.rstrip('.').lower()`."""
    return text.rstrip(".").lower()


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Gqa(evaluate.Metric):
    """GQA accuracy: LLaVA's convert_gqa_for_eval.py, then exact match as in GQA's eval.py."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/haotian-liu/LLaVA", "https://cs.stanford.edu/people/dorarad/gqa/"],
            reference_urls=["https://arxiv.org/abs/1902.09506"],
        )

    def _compute(self, predictions, references):
        scores = []
        for index, (prediction, gold) in enumerate(zip(predictions, references)):
            if not isinstance(prediction, str):
                raise TypeError(
                    f"predictions[{index}] is {prediction!r} ({type(prediction).__name__}); pass the answer text."
                )
            if not isinstance(gold, str):
                raise TypeError(f"references[{index}] is {gold!r}; pass the gold `answer` string of the question.")
            scores.append(1.0 if convert_gqa_prediction(prediction) == gold else 0.0)
        return {"accuracy": sum(scores) / len(scores) if scores else 0.0, "per_question": scores}
