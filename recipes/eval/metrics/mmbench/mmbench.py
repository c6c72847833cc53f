"""MMBench (and MMBench-CN) with VLMEvalKit's rule-based answer matcher (no LLM) and circular evaluation.

This is an `evaluate` module loaded by path. `evaluate` copies this single file into its module cache, so it imports
only the standard library, `datasets` and `evaluate`.
"""

from __future__ import annotations

import re
import string

import datasets
import evaluate

_CITATION = """\
@inproceedings{liu2024mmbench,
  title={{MMBench}: Is Your Multi-modal Model an All-around Player?},
  author={Liu, Yuan and Duan, Haodong and Zhang, Yuanhan and Li, Bo and Zhang, Songyang and Zhao, Wangbo and
          Yuan, Yike and Wang, Jiaqi and He, Conghui and Liu, Ziwei and Chen, Kai and Lin, Dahua},
  booktitle={ECCV},
  year={2024}
}
"""

_DESCRIPTION = """\
MMBench / MMBench-CN dev accuracy with the rule-based matcher of open-compass/VLMEvalKit (`vlmeval/utils/
matching_util.py` `can_infer`, at e8e78f0, 2026-08) and its exact-matching policy (no LLM judge: an answer the rules
cannot read scores 0, as VLMEvalKit's `'Z'`).

`can_infer(answer, options)` = `can_infer_option`, else `can_infer_text`:
- `can_infer_option`: "Failed to obtain answer via API" -> no match; one of four refusal phrases -> "Z"; replace each
  of `.()[],:;!*#{}` by a space and split on whitespace; if exactly one option letter occurs as a word and its first
  occurrence is among the last 4 words -> that letter ("The correct answer is A." -> A; "A cat is on the left of
  the dog" -> not "A", the letter is too early); if no option letter occurs and "Z" does -> "Z"; then (added
  2026-06, a67ace5) the case-insensitive pattern `(?:correct\\s+)?answer\\s+is\\s+\\**([ABCD])\\**` on the raw answer.
- `can_infer_text`: lowercase; if the answer is longer than twice the total length of the option texts -> no
  match; the letter whose lowercased option text occurs in the answer, if exactly one does.

Circular evaluation (the reported MMBench metric): every question is asked once per rotation of its options, all
rows of a question share a group id, and the question counts as right only if every one of its rows is right.
`accuracy` is the per-row accuracy (VLMEvalKit's "vanilla" evaluation on the same rows).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the model's raw answers, one per row (rotation).
    references (`list[str]`): the correct letter of each row (after the rotation), e.g. "B".
    options (`list[dict[str, str]]`): per row, the letters present mapped to their option texts (only the letters
        with an option: VLMEvalKit's `build_choices`).
    groups (`list`, *optional*): per row, the id of the original question (`index % 1_000_000` in VLMEvalKit; the
        `index` column of the TSV). Without it every row is its own question.
    match_verbose_answer (`bool`, defaults to `True`): use the "answer is X" pattern of VLMEvalKit's current matcher;
        `False` reproduces the matcher before 2026-06.
Returns:
    circular_accuracy (`float`): fraction of questions with every row right, in [0, 1].
    accuracy (`float`): fraction of rows right.
    per_question (`list[float]`): 1.0 or 0.0 per row.
    circular_per_question (`dict`): group id -> 1.0 or 0.0.
    parsed (`list[str | None]`): the letter read from each row ("Z" for a refusal, None when nothing matched).
Examples:
    >>> mmbench = evaluate.load("recipes/eval/metrics/mmbench")
    >>> r = mmbench.compute(predictions=["The correct answer is A.", "B"], references=["A", "A"],
    ...                     options=[{"A": "cat", "B": "dog"}, {"A": "dog", "B": "cat"}], groups=[7, 7])
    >>> r["accuracy"], r["circular_accuracy"]
    (0.5, 0.0)
"""

_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_SEPARATORS = ".()[],:;!*#{}"
_VERBOSE_ANSWER = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def can_infer_option(answer: str, options: dict[str, str], match_verbose_answer: bool = True) -> str | None:
    """VLMEvalKit's `can_infer_option` (VERBOSE unset): an option letter, "Z" for a refusal, or None."""
    if "Failed to obtain answer via API" in answer:
        return None
    if any(refusal in answer for refusal in _REFUSALS):
        return "Z"
    modified = answer
    for char in _SEPARATORS:
        modified = modified.replace(char, " ")
    words = [word.strip() for word in modified.split()]
    count = sum(1 for letter in options if letter in words)
    if count == 1:
        for letter in options:
            # Only a letter among the last four words: an early "A" is usually the article.
            if letter in words and words.index(letter) > len(words) - 5:
                return letter
    elif count == 0 and "Z" in words:
        return "Z"
    if match_verbose_answer:
        match = _VERBOSE_ANSWER.search(answer)
        if match and match.group(1).upper() in options:
            return match.group(1).upper()
    return None


def can_infer_text(answer: str, options: dict[str, str]) -> str | None:
    """VLMEvalKit's `can_infer_text`: the one option whose lowercased text occurs in the lowercased answer."""
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(text)) for text in options.values()):
        return None
    found = [letter for letter, text in options.items() if str(text).lower() in answer]
    return found[0] if len(found) == 1 else None


def can_infer(answer: str, options: dict[str, str], match_verbose_answer: bool = True) -> str | None:
    """VLMEvalKit's `can_infer`: `can_infer_option`, else `can_infer_text`."""
    answer = str(answer)
    return can_infer_option(answer, options, match_verbose_answer) or can_infer_text(answer, options)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Mmbench(evaluate.Metric):
    """MMBench circular and per-row accuracy with VLMEvalKit's rule-based matcher."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/open-compass/VLMEvalKit"],
            reference_urls=["https://arxiv.org/abs/2307.06281"],
        )

    def _compute(self, predictions, references, options=None, groups=None, match_verbose_answer: bool = True):
        count = len(predictions)
        if options is None or len(options) != count:
            raise ValueError(
                f"options must give, for each of the {count} rows, the dict letter -> option text of the letters "
                f"present; got {None if options is None else len(options)} entries."
            )
        if groups is None:
            groups = list(range(count))
        if len(groups) != count:
            raise ValueError(f"groups has {len(groups)} entries for {count} rows; pass the question id of each row.")
        for index, (prediction, reference, row_options) in enumerate(zip(predictions, references, options)):
            if not isinstance(prediction, str):
                raise TypeError(
                    f"predictions[{index}] is {prediction!r} ({type(prediction).__name__}); pass the answer text."
                )
            if not isinstance(row_options, dict) or not row_options:
                raise ValueError(
                    f"options[{index}] is {row_options!r}; pass a dict such as {{'A': 'cat', 'B': 'dog'}}."
                )
            bad = [letter for letter in row_options if not (len(letter) == 1 and letter in string.ascii_uppercase)]
            if bad:
                raise ValueError(f"options[{index}] has keys {bad}; option keys are single capital letters.")
            if reference not in row_options:
                raise ValueError(
                    f"references[{index}] is {reference!r}, not one of the row's letters {sorted(row_options)}."
                )
        parsed = [
            can_infer(prediction, dict(row_options), match_verbose_answer)
            for prediction, row_options in zip(predictions, options)
        ]
        per_question = [1.0 if letter == reference else 0.0 for letter, reference in zip(parsed, references)]
        circular = {}
        for group, score in zip(groups, per_question):
            circular[group] = min(circular.get(group, 1.0), score)
        return {
            "circular_accuracy": sum(circular.values()) / len(circular) if circular else 0.0,
            "accuracy": sum(per_question) / count if count else 0.0,
            "per_question": per_question,
            "circular_per_question": circular,
            "parsed": parsed,
        }
