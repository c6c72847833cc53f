"""ScienceQA accuracy exactly as LLaVA's `llava/eval/eval_science_qa.py` parses the answers and counts SQA-IMG.

This is an `evaluate` module loaded by path. `evaluate` copies this single file into its module cache, so it imports
only the standard library, `datasets` and `evaluate`.
"""

from __future__ import annotations

import re

import datasets
import evaluate

_CITATION = """\
@inproceedings{lu2022learn,
  title={Learn to Explain: Multimodal Reasoning via Thought Chains for Science Question Answering},
  author={Lu, Pan and Mishra, Swaroop and Xia, Tony and Qiu, Liang and Chang, Kai-Wei and Zhu, Song-Chun and
          Tafjord, Oyvind and Clark, Peter and Kalyan, Ashwin},
  booktitle={NeurIPS},
  year={2022}
}
"""

_DESCRIPTION = """\
ScienceQA (test split) accuracy as LLaVA-1.5 and SQ-LLaVA report it, with LLaVA's `eval_science_qa.py` rules
(SQ-LLaVA's copy is identical). The answer text is read as a letter among A-E, in this order:

1. the whole text is one of "A", "B", "C", "D", "E" -> that letter;
2. the text has >= 3 characters, its first is one of A-E and the next two are ". " ("A. a cat") -> that letter;
3. the case-sensitive pattern `The answer is ([A-Z]).` (the final "." matches any character) occurs exactly once
   -> its letter ("The answer is B." or "The answer is B!"; not "The answer is B" at the very end, not "the answer
   is B.", not two such statements);
4. otherwise "FAILED".

The letter scores only if it is within the question's options (A.. up to the number of choices) and is the correct
one; "FAILED" (and a missing answer, which the script also turns into "FAILED") scores 0. So "C)", "C.", the option's
text and "I cannot tell." are all FAILED.

`accuracy` is correct / all questions; `img_accuracy` (the paper's SQA-IMG) is correct / questions with an image,
where the script counts a question as having an image when its answer's `prompt` contains "<image>" (an unanswered
question, prompt "Unknown", is not counted there).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the model's raw answers (the `text` of LLaVA's answer file); pass "FAILED" for a
        question without an answer, as the script does.
    references (`list[int]`): the index of the correct option (`problems.json` `answer`).
    choices (`list[list[str]]`): the options of each question (`problems.json` `choices`).
    has_image (`list[bool]`): whether the question counts for SQA-IMG ("<image>" in the answer's prompt).
Returns:
    accuracy (`float`): fraction of all questions answered right, in [0, 1].
    img_accuracy (`float`): fraction of the image questions answered right (0.0 and a note if there are none).
    per_question (`list[float]`): 1.0 or 0.0 per question.
    parsed (`list[str]`): the letter read from each answer, or "FAILED".
    notes (`list[str]`).
Examples:
    >>> sqa = evaluate.load("recipes/eval/metrics/scienceqa")
    >>> sqa.compute(predictions=["B", "C)"], references=[1, 2], choices=[["x", "y"], ["x", "y", "z"]],
    ...             has_image=[True, False])["accuracy"]
    0.5
"""

OPTIONS = ("A", "B", "C", "D", "E")
# Unescaped "." as in the script: any character after the letter.
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse_answer(text: str) -> str:
    """The letter eval_science_qa.py reads from an answer, or "FAILED"."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def predicted_index(letter: str, num_choices: int) -> int:
    """`get_pred_idx`: the option index of the letter, -1 when it is FAILED or past the last option."""
    return OPTIONS.index(letter) if letter in OPTIONS[:num_choices] else -1


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Scienceqa(evaluate.Metric):
    """ScienceQA accuracy and SQA-IMG with LLaVA's eval_science_qa.py letter parsing."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("int64")}
            ),
            codebase_urls=["https://github.com/haotian-liu/LLaVA", "https://github.com/lupantech/ScienceQA"],
            reference_urls=["https://scienceqa.github.io/"],
        )

    def _compute(self, predictions, references, choices=None, has_image=None):
        count = len(predictions)
        if choices is None or len(choices) != count:
            raise ValueError(
                f"choices must list the options of each of the {count} questions (problems.json `choices`); got "
                f"{None if choices is None else len(choices)} entries."
            )
        if has_image is None or len(has_image) != count:
            raise ValueError(
                f"has_image must give one bool per question ({count}); got {None if has_image is None else len(has_image)}."
            )
        for index, (prediction, answer, options) in enumerate(zip(predictions, references, choices)):
            if not isinstance(prediction, str):
                raise TypeError(
                    f"predictions[{index}] is {prediction!r} ({type(prediction).__name__}); pass the answer text "
                    "('FAILED' for an unanswered question)."
                )
            if not 0 <= answer < len(options):
                raise ValueError(
                    f"references[{index}] is {answer!r} but the question has {len(options)} choices; pass the "
                    "index of the correct option (problems.json `answer`)."
                )
        parsed = [parse_answer(prediction) for prediction in predictions]
        per_question = [
            1.0 if predicted_index(letter, len(options)) == answer else 0.0
            for letter, answer, options in zip(parsed, references, choices)
        ]
        notes = []
        image_rows = [score for score, image in zip(per_question, has_image) if image]
        if image_rows:
            img_accuracy = sum(image_rows) / len(image_rows)
        else:
            img_accuracy = 0.0
            notes.append("no question has an image: img_accuracy set to 0.0 (eval_science_qa.py divides by zero)")
        return {
            "accuracy": sum(per_question) / count if count else 0.0,
            "img_accuracy": img_accuracy,
            "per_question": per_question,
            "parsed": parsed,
            "notes": notes,
        }
