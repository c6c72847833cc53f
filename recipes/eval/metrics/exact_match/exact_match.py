"""Exact match for short answers (GQA protocol), with the normalisation named by the caller.

This is an `evaluate` module loaded by path. It imports only the standard library, `datasets` and `evaluate`
because `evaluate` copies this single file into its module cache.
"""

from __future__ import annotations

import re
import string

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
Exact match between a predicted short answer and the reference answer, after normalising both.

The official GQA protocol (no whitespace stripping) is the `gqa` module; this module scores the synthetic `shapes`
benchmark and other single-reference short answers.

`normalization="gqa"` (default) follows the protocol behind the GQA numbers of LLaVA-1.5 and SQ-LLaVA: LLaVA's
`scripts/convert_gqa_for_eval.py` turns each prediction into `text.rstrip(".").lower()` and the official GQA
`eval.py` then compares strings exactly (GQA answers are already lowercase, without final period). Here the same
function (after stripping surrounding whitespace) is applied to the reference too, which leaves GQA answers unchanged.

`normalization="lenient"` is for answers phrased less tightly (e.g. a small model on the synthetic shapes data):
lowercase, every ASCII punctuation character removed, the articles "a", "an", "the" removed, whitespace collapsed
(the usual SQuAD-style answer normalisation), so "A red cube." matches "red cube".

`normalization="none"` compares the raw strings.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the model's answers.
    references (`list[str]`): the ground-truth answers.
    normalization (`str`, defaults to `"gqa"`): `"gqa"`, `"lenient"` or `"none"` (see the description).
    return_per_sample (`bool`, defaults to `False`): also return `"per_sample"` (the same list as `per_question`).
Returns:
    exact_match (`float`): fraction of answers equal to their reference after normalisation, in [0, 1].
    per_question (`list[float]`): 1.0 or 0.0 for each answer.
Examples:
    >>> em = evaluate.load("recipes/eval/metrics/exact_match")
    >>> em.compute(predictions=["Yes.", "the left"], references=["yes", "left"])
    {'exact_match': 0.5, 'per_question': [1.0, 0.0]}
    >>> em.compute(predictions=["Yes.", "the left"], references=["yes", "left"], normalization="lenient")
    {'exact_match': 1.0, 'per_question': [1.0, 1.0]}
"""

NORMALIZATIONS = ("gqa", "lenient", "none")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)


def normalize_gqa(text: str) -> str:
    """LLaVA's GQA conversion: drop trailing periods, lowercase (plus surrounding whitespace)."""
    return text.strip().rstrip(".").lower()


def normalize_lenient(text: str) -> str:
    """Lowercase, remove ASCII punctuation and the articles a/an/the, collapse whitespace."""
    text = text.lower().translate(_PUNCTUATION_TABLE)
    return " ".join(_ARTICLES.sub(" ", text).split())


def normalize_answer(text: str, normalization: str = "gqa") -> str:
    if normalization == "gqa":
        return normalize_gqa(text)
    if normalization == "lenient":
        return normalize_lenient(text)
    return text


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    """Exact match after GQA-style (or lenient) answer normalisation."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/haotian-liu/LLaVA/blob/main/scripts/convert_gqa_for_eval.py"],
            reference_urls=["https://cs.stanford.edu/people/dorarad/gqa/evaluate.html"],
        )

    def _compute(self, predictions, references, normalization: str = "gqa", return_per_sample: bool = False):
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization={normalization!r} is not supported: use one of {NORMALIZATIONS} ('gqa' reproduces "
                "LLaVA's GQA protocol, 'lenient' also ignores punctuation and articles)."
            )
        scores = [
            float(normalize_answer(prediction, normalization) == normalize_answer(reference, normalization))
            for prediction, reference in zip(predictions, references)
        ]
        result = {"exact_match": sum(scores) / len(scores) if scores else 0.0, "per_question": scores}
        if return_per_sample:  # the former name of per_question, kept for existing callers
            result["per_sample"] = scores
        return result
