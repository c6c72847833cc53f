"""Multiple-choice accuracy with ScienceQA / MMBench answer-letter parsing of free-form answers.

This is an `evaluate` module loaded by path. It imports only the standard library, `datasets` and `evaluate`
because `evaluate` copies this single file into its module cache.
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
@inproceedings{liu2024mmbench,
  title={{MMBench}: Is Your Multi-modal Model an All-around Player?},
  author={Liu, Yuan and Duan, Haodong and Zhang, Yuanhan and Li, Bo and Zhang, Songyang and Zhao, Wangbo and
    Yuan, Yike and Wang, Jiaqi and He, Conghui and Liu, Ziwei and Chen, Kai and Lin, Dahua},
  booktitle={ECCV},
  year={2024}
}
"""

_DESCRIPTION = """\
Multiple-choice accuracy. The option letter is read from each free-form answer by the first rule that applies:

1. the answer is just a valid letter, possibly wrapped or followed by punctuation: "C", "C.", "B)", "(B)";
2. the answer starts with a valid letter followed by ". ", ") " or ": " ("A. cat"): LLaVA's ScienceQA rule;
3. the answer contains "The answer is X" (case-insensitive phrase, capital letter X), one letter only: LLaVA's
   ScienceQA chain-of-thought rule (`llava/eval/eval_science_qa.py`);
4. exactly one valid letter appears as a standalone token once the characters `.()[],:;!*#{}` are blanked
   (MMBench / VLMEvalKit `can_infer_option`), except a lone "A" in an answer of more than 3 tokens, which is the
   article far more often than the option (VLMEvalKit warns about the same case);
5. with `choices` given: exactly one option text occurs in the lowercased answer (VLMEvalKit `can_infer_text`).

Valid letters are the first `len(choices[i])` of `options` when `choices` is given (a letter beyond the last option
is not an answer, as in LLaVA's `get_pred_idx`), else all of `options`. An answer no rule reads is counted wrong and
reported in `unparseable`. Accuracy is a fraction in [0, 1] (LLaVA and MMBench print it x 100).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the model's free-form answers.
    references (`list[str]`): the correct option letter of each question ("A", "B", ...).
    choices (`list[list[str]]`, *optional*): the option texts of each question, in letter order; enables rule 5
        and limits the valid letters to the number of options.
    options (`str`, defaults to `"ABCDE"`): the option letters in order (ScienceQA has up to 5 options, MMBench 4).
    return_per_sample (`bool`, defaults to `False`): also return `"parsed"`, the letter read from each answer (None
        when unparseable).
Returns:
    accuracy (`float`): fraction of answers whose parsed letter equals the reference, in [0, 1].
    unparseable (`int`): number of answers no rule could read (counted as wrong).
    parsed (`list[str | None]`, only with `return_per_sample=True`).
Examples:
    >>> mc = evaluate.load("recipes/metrics/multiple_choice")
    >>> mc.compute(predictions=["B)", "The answer is C.", "a cat", "I am not sure"], references=["B", "C", "A", "D"],
    ...            choices=[["dog", "cat"], ["x", "y", "z"], ["cat", "dog"], ["1", "2", "3", "4"]])
    {'accuracy': 0.75, 'unparseable': 1}
"""

# Characters VLMEvalKit blanks before looking for standalone option letters.
_MMBENCH_BLANKED = ".()[],:;!*#{}"
_ANSWER_IS = re.compile(r"(?i:the answer is)\s*:?\s*\(?([A-Z])\b")


def parse_choice(prediction: str, letters: str, choices: list[str] | None = None) -> str | None:
    """Return the option letter read from `prediction` (one of `letters`), or None if no rule reads one."""
    text = prediction.replace("\n", " ").strip()

    match = re.fullmatch(r"\(?([A-Z])\s*[).:]?", text)
    if match and match.group(1) in letters:
        return match.group(1)

    match = re.match(r"\(?([A-Z])[.):] ", text)
    if match and match.group(1) in letters:
        return match.group(1)

    found = set(_ANSWER_IS.findall(text))
    if len(found) == 1:
        letter = found.pop()
        # A letter past the last option is not an answer (LLaVA's get_pred_idx returns -1); no later rule rescues it.
        return letter if letter in letters else None

    blanked = text
    for char in _MMBENCH_BLANKED:
        blanked = blanked.replace(char, " ")
    tokens = blanked.split()
    found = [letter for letter in letters if letter in tokens]
    if len(found) == 1 and not (found[0] == "A" and len(tokens) > 3):
        return found[0]

    if choices:
        lowered = text.lower()
        found = [letter for letter, option in zip(letters, choices) if str(option).lower() in lowered]
        if len(found) == 1:
            return found[0]
    return None


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MultipleChoice(evaluate.Metric):
    """Multiple-choice accuracy with ScienceQA/MMBench letter parsing."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=[
                "https://github.com/haotian-liu/LLaVA/blob/main/llava/eval/eval_science_qa.py",
                "https://github.com/open-compass/VLMEvalKit",
            ],
            reference_urls=["https://scienceqa.github.io", "https://mmbench.opencompass.org.cn"],
        )

    def _compute(
        self,
        predictions,
        references,
        choices: list[list[str]] | None = None,
        options: str = "ABCDE",
        return_per_sample: bool = False,
    ):
        if not isinstance(options, str) or not options or not all(letter.isupper() for letter in options):
            raise ValueError(f"options={options!r} must be a string of capital letters in order, e.g. 'ABCD'.")
        if choices is not None and len(choices) != len(predictions):
            raise ValueError(
                f"choices has {len(choices)} entries but there are {len(predictions)} predictions; pass one list of "
                "option texts per question."
            )
        parsed = []
        for index, prediction in enumerate(predictions):
            question_choices = None if choices is None else list(choices[index])
            if question_choices is not None and len(question_choices) > len(options):
                raise ValueError(
                    f"choices[{index}] has {len(question_choices)} options but options={options!r} names only "
                    f"{len(options)} letters; pass a longer `options` string."
                )
            letters = options if question_choices is None else options[: len(question_choices)]
            parsed.append(parse_choice(prediction, letters, question_choices))
        correct = 0
        for index, (letter, reference) in enumerate(zip(parsed, references)):
            reference = reference.strip()
            if len(reference) != 1 or reference not in options:
                raise ValueError(
                    f"references[{index}] is {references[index]!r}; references must be option letters from "
                    f"{options!r} (convert an answer index i with {options!r}[i])."
                )
            correct += int(letter == reference)
        result = {
            "accuracy": correct / len(parsed) if parsed else 0.0,
            "unparseable": sum(1 for letter in parsed if letter is None),
        }
        if return_per_sample:
            result["parsed"] = parsed
        return result
