"""POPE: yes/no object-hallucination metrics (accuracy, precision, recall, F1, yes-ratio) on free-form answers.

This is an `evaluate` module loaded by path. It imports only the standard library, `datasets` and `evaluate`
because `evaluate` copies this single file into its module cache.
"""

from __future__ import annotations

import datasets
import evaluate

_CITATION = """\
@inproceedings{li2023evaluating,
  title={Evaluating Object Hallucination in Large Vision-Language Models},
  author={Li, Yifan and Du, Yifan and Zhou, Kun and Wang, Jinpeng and Zhao, Wayne Xin and Wen, Ji-Rong},
  booktitle={EMNLP},
  year={2023}
}
"""

_DESCRIPTION = """\
POPE (Polling-based Object Probing Evaluation). Each free-form answer is turned into "yes" or "no" exactly as
LLaVA's `llava/eval/eval_pope.py` does: keep the text before the first ".", delete commas, split on single spaces;
the answer is "no" if one of the words is exactly "No", "no" or "not", and "yes" otherwise (so an empty or off-topic
answer counts as "yes"). With "yes" as the positive class the module returns accuracy, precision, recall, F1 and the
yes-ratio (fraction of "yes" predictions), as fractions in [0, 1] like the LLaVA script (papers print them x 100).
POPE reports each split (random, popular, adversarial) separately: call the metric once per split.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the model's free-form answers.
    references (`list[str]`): the labels, "yes" or "no" (case and surrounding spaces ignored).
    return_per_sample (`bool`, defaults to `False`): also return `"parsed"`, the "yes"/"no" read from each answer.
Returns:
    accuracy (`float`): (TP + TN) / N.
    precision (`float`): TP / (TP + FP), 0.0 when nothing was predicted "yes" (the LLaVA script divides by zero).
    recall (`float`): TP / (TP + FN), 0.0 when no label is "yes".
    f1 (`float`): 2 * precision * recall / (precision + recall), 0.0 when both are 0.
    yes_ratio (`float`): fraction of answers read as "yes".
    tp, fp, tn, fn (`int`): the confusion matrix with "yes" as the positive class.
    parsed (`list[str]`, only with `return_per_sample=True`).
Examples:
    >>> pope = evaluate.load("recipes/metrics/pope")
    >>> r = pope.compute(predictions=["Yes, a dog.", "No.", "There is not a cat."], references=["yes", "yes", "no"])
    >>> r["precision"], r["recall"], r["yes_ratio"], (r["tp"], r["fn"], r["tn"])
    (1.0, 0.5, 0.3333333333333333, (1, 1, 1))
"""

NEGATIVE_WORDS = ("No", "not", "no")


def parse_yes_no(answer: str) -> str:
    """Read "yes" or "no" from a free-form answer, as LLaVA's eval_pope.py does."""
    # Only the first sentence counts: "No. There is a dog in the picture" must stay "no".
    if "." in answer:
        answer = answer.split(".")[0]
    words = answer.replace(",", "").split(" ")
    return "no" if any(word in NEGATIVE_WORDS for word in words) else "yes"


def _safe_ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Pope(evaluate.Metric):
    """POPE accuracy, precision, recall, F1 and yes-ratio with LLaVA's yes/no parsing."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/RUCAIBox/POPE", "https://github.com/haotian-liu/LLaVA"],
            reference_urls=["https://arxiv.org/abs/2305.10355"],
        )

    def _compute(self, predictions, references, return_per_sample: bool = False):
        labels = []
        for index, label in enumerate(references):
            label = label.strip().lower()
            if label not in ("yes", "no"):
                raise ValueError(
                    f"references[{index}] is {references[index]!r}; POPE labels must be 'yes' or 'no'. Pass the "
                    "`label` field of the POPE annotation files."
                )
            labels.append(label)
        parsed = [parse_yes_no(prediction) for prediction in predictions]
        tp = sum(1 for pred, label in zip(parsed, labels) if pred == "yes" and label == "yes")
        fp = sum(1 for pred, label in zip(parsed, labels) if pred == "yes" and label == "no")
        tn = sum(1 for pred, label in zip(parsed, labels) if pred == "no" and label == "no")
        fn = sum(1 for pred, label in zip(parsed, labels) if pred == "no" and label == "yes")
        precision = _safe_ratio(tp, tp + fp)
        recall = _safe_ratio(tp, tp + fn)
        result = {
            "accuracy": _safe_ratio(tp + tn, len(parsed)),
            "precision": precision,
            "recall": recall,
            "f1": _safe_ratio(2 * precision * recall, precision + recall),
            "yes_ratio": _safe_ratio(parsed.count("yes"), len(parsed)),
            "tp": tp,
            "fp": fp,
            "tn": tn,
            "fn": fn,
        }
        if return_per_sample:
            result["parsed"] = parsed
        return result
