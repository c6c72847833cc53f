"""POPE per split, exactly as LLaVA's `llava/eval/eval_pope.py` parses the answers and computes its five numbers.

This is an `evaluate` module loaded by path. `evaluate` copies this single file into its module cache, so it imports
only the standard library, `datasets` and `evaluate`.
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
POPE (Polling-based Object Probing Evaluation) as LLaVA-1.5 and SQ-LLaVA report it: LLaVA's `eval_pope.py` scores
each split (`coco_pope_adversarial`, `_popular`, `_random`) on its own, and the paper's POPE figure is the mean F1
of the three splits.

Answer parsing, as `eval_pope.py`: keep the text before the first "." (if there is one), delete ",", split on single
spaces; the answer is "no" when one of the words is exactly "No", "no" or "not", otherwise "yes" (an empty,
upper-case "NO" or off-topic answer counts as "yes").

Per split, with "yes" as the positive class: accuracy = (TP + TN) / N, precision = TP / (TP + FP),
recall = TP / (TP + FN), F1 = 2 P R / (P + R), yes-ratio = fraction of answers read as "yes".

Where `eval_pope.py` divides by zero and crashes (no answer read as "yes": TP + FP = 0; no "yes" label: TP + FN = 0;
P + R = 0), this module returns 0.0 for that precision, recall or F1 and says so in `notes`: never a crash or NaN.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the model's raw answers (the `text` of LLaVA's answer file).
    references (`list[str]`): the `label` of each question in its `coco_pope_<split>.json`, "yes" or "no".
    splits (`list[str]`, *optional*): the split of each question ("adversarial", "popular", "random": the
        `category` of `llava_pope_test.jsonl`), aligned with `predictions`. Without it all questions form one split
        named "all".
Returns:
    accuracy_<split>, precision_<split>, recall_<split>, f1_<split>, yes_ratio_<split> (`float`): for every split
        present, fractions in [0, 1] (LLaVA prints them with 3 decimals, papers x 100).
    f1 (`float`): the mean of the splits' F1.
    per_question (`list[float]`): 1.0 where the parsed answer equals the label, else 0.0.
    parsed (`list[str]`): "yes" or "no" read from each answer.
    counts (`dict[str, dict[str, int]]`): TP, FP, TN, FN per split.
    notes (`list[str]`): where a value was defined because eval_pope.py would divide by zero.
Examples:
    >>> pope = evaluate.load("recipes/eval/metrics/pope")
    >>> r = pope.compute(predictions=["Yes, a dog.", "No.", "No"], references=["yes", "yes", "no"],
    ...                  splits=["random", "random", "random"])
    >>> r["precision_random"], r["recall_random"], r["f1"]
    (1.0, 0.5, 0.6666666666666666)
"""

NEGATIVE_WORDS = ("No", "not", "no")


def parse_yes_no(answer: str) -> str:
    """Read "yes" or "no" from a free-form answer, as eval_pope.py does."""
    if answer.find(".") != -1:
        answer = answer.split(".")[0]
    words = answer.replace(",", "").split(" ")
    return "no" if any(word in words for word in NEGATIVE_WORDS) else "yes"


def split_scores(parsed: list[str], labels: list[str], split: str, notes: list[str]) -> tuple[dict, dict]:
    """eval_pope.py's five numbers for one split, with 0.0 where it would divide by zero (recorded in `notes`)."""
    tp = sum(1 for pred, label in zip(parsed, labels) if pred == "yes" and label == "yes")
    fp = sum(1 for pred, label in zip(parsed, labels) if pred == "yes" and label == "no")
    tn = sum(1 for pred, label in zip(parsed, labels) if pred == "no" and label == "no")
    fn = sum(1 for pred, label in zip(parsed, labels) if pred == "no" and label == "yes")
    if tp + fp == 0:
        precision = 0.0
        notes.append(
            f"{split}: no answer was read as 'yes' (TP + FP = 0): precision set to 0.0 (eval_pope.py crashes)"
        )
    else:
        precision = float(tp) / float(tp + fp)
    if tp + fn == 0:
        recall = 0.0
        notes.append(f"{split}: no label is 'yes' (TP + FN = 0): recall set to 0.0 (eval_pope.py crashes)")
    else:
        recall = float(tp) / float(tp + fn)
    if precision + recall == 0:
        f1 = 0.0
        notes.append(f"{split}: precision + recall = 0: F1 set to 0.0 (eval_pope.py crashes)")
    else:
        f1 = 2 * precision * recall / (precision + recall)
    scores = {
        f"accuracy_{split}": (tp + tn) / (tp + tn + fp + fn),
        f"precision_{split}": precision,
        f"recall_{split}": recall,
        f"f1_{split}": f1,
        f"yes_ratio_{split}": parsed.count("yes") / len(parsed),
    }
    return scores, {"tp": tp, "fp": fp, "tn": tn, "fn": fn}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Pope(evaluate.Metric):
    """POPE per split with LLaVA's eval_pope.py parsing; F1 = mean over splits."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/haotian-liu/LLaVA", "https://github.com/RUCAIBox/POPE"],
            reference_urls=["https://arxiv.org/abs/2305.10355"],
        )

    def _compute(self, predictions, references, splits=None):
        if splits is None:
            splits = ["all"] * len(predictions)
        if len(splits) != len(predictions):
            raise ValueError(
                f"splits has {len(splits)} entries for {len(predictions)} predictions; pass one split name per question."
            )
        for index, (prediction, label, split) in enumerate(zip(predictions, references, splits)):
            if not isinstance(prediction, str):
                raise TypeError(
                    f"predictions[{index}] is {prediction!r} ({type(prediction).__name__}); pass the answer text."
                )
            if label not in ("yes", "no"):
                raise ValueError(
                    f"references[{index}] is {label!r}; POPE labels are 'yes' or 'no' (the `label` of "
                    "coco_pope_<split>.json)."
                )
            if not isinstance(split, str) or not split:
                raise ValueError(f"splits[{index}] is {split!r}; pass the split name, e.g. 'adversarial'.")
        parsed = [parse_yes_no(prediction) for prediction in predictions]
        result, counts, notes = {}, {}, []
        for split in dict.fromkeys(splits):  # first-seen order
            rows = [index for index, name in enumerate(splits) if name == split]
            scores, counts[split] = split_scores(
                [parsed[i] for i in rows], [references[i] for i in rows], split, notes
            )
            result.update(scores)
        f1s = [result[f"f1_{split}"] for split in counts]
        result["f1"] = sum(f1s) / len(f1s) if f1s else 0.0
        result["per_question"] = [1.0 if pred == label else 0.0 for pred, label in zip(parsed, references)]
        result["parsed"] = parsed
        result["counts"] = counts
        result["notes"] = notes
        return result
