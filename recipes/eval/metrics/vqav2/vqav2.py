"""VQAv2 accuracy exactly as LLaVA's numbers are obtained: `EvalAIAnswerProcessor`, then the official `vqaEval.py`.

This is an `evaluate` module loaded by path. `evaluate` copies this single file into its module cache, so it imports
only the standard library, `datasets` and `evaluate`, and repeats the answer-processing tables it needs.
"""

from __future__ import annotations

import re

import datasets
import evaluate

_CITATION = """\
@inproceedings{goyal2017making,
  title={Making the {V} in {VQA} Matter: Elevating the Role of Image Understanding in Visual Question Answering},
  author={Goyal, Yash and Khot, Tejas and Summers-Stay, Douglas and Batra, Dhruv and Parikh, Devi},
  booktitle={CVPR},
  year={2017}
}
"""

_DESCRIPTION = """\
VQAv2 accuracy as LLaVA-1.5 and SQ-LLaVA report it (test-dev on the EvalAI server; the same rules score val here).

1. LLaVA's `scripts/convert_vqav2_for_submission.py` runs every answer through `EvalAIAnswerProcessor`
   (`llava/eval/m4c_evaluator.py`, from MMF): lowercase; drop "," and "?"; "'s" becomes " 's"; newlines and tabs
   become spaces; then the punctuation, number-word, article and contraction steps of the official script.
   `evalai_preprocess=False` skips this step (for answers that are already the uploaded strings).
2. The official scorer, GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py` at its current head
   (a013f00, "Fixed processing answers bug", March 2021), per question: newlines/tabs of the answer and of the
   human answers become spaces and both are stripped; **if the human answers are not all identical**, every human
   answer and the answer go through `processPunctuation` then `processDigitArticle`; if they are all identical,
   nothing more is processed (the answer is compared as it is). The accuracy of the question is the mean over the
   human answers h of min(1, #(other human answers equal to the answer) / 3): with 10 humans and k of them matching,
   0, 1, 2, 3, >= 4 give 0.0, 0.3, 0.6, 0.9, 1.0.

The pre-2021 script (the rule of the former `vqa_accuracy` module) always processed the answer and only
punctuation-processed the human answers when they disagreed: "Two" among disagreeing human answers never matched
the answer "2" there, and matches here.

The reported accuracy is the mean over questions (the server prints 100 x, rounded to 2 decimals; this module
returns the unrounded fraction).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the model's raw answers (the `text` of LLaVA's answer file), one per question.
    references (`list[list[str]]`): the raw human answers of each question (the 10 `answer` strings of
        `v2_mscoco_val2014_annotations.json`), at least one.
    evalai_preprocess (`bool`, defaults to `True`): apply LLaVA's `EvalAIAnswerProcessor` to each answer first, as
        LLaVA does before uploading.
Returns:
    accuracy (`float`): mean accuracy over questions, in [0, 1].
    per_question (`list[float]`): the accuracy of each question, aligned with `predictions`.
Examples:
    >>> vqav2 = evaluate.load("recipes/eval/metrics/vqav2")
    >>> vqav2.compute(predictions=["Two."], references=[["2"] * 2 + ["3"] * 8])
    {'accuracy': 0.6, 'per_question': [0.6]}
"""

# Answer-normalisation tables of the official script (identical in MMF's EvalAIAnswerProcessor), kept verbatim with
# their quirks: keys with capitals ("Im") never match because words are lowercased first, and "somebody'd" maps to
# "somebodyd". Changing them would change scores.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't",
    "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am",
    "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = ("a", "an", "the")
PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip
# The official pattern "(?!<=\d)(\.)(?!\d)" starts with a (typo'd) lookahead, so in effect a period is removed unless a
# digit follows it ("3.5" keeps its period, "dog." loses it). Kept verbatim.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
# vqaEval.py's digit-comma test; MMF's EvalAIAnswerProcessor uses its own (same decision on any text whose commas
# survive, and EvalAIAnswerProcessor deletes every comma before it gets there).
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
EVALAI_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
# Both scripts call `PERIOD_STRIP.sub("", text, re.UNICODE)`, which passes re.UNICODE (32) as `count`: at most 32
# periods are removed. Reproduced for exactness.
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)


def process_punctuation(text: str, comma_strip: re.Pattern = COMMA_STRIP) -> str:
    """`processPunctuation`: a mark is deleted when it touches a space in the text, or when the text has a comma
    between two digits ("100,978" -> "100978"); otherwise it becomes a space ("black/white" -> "black white"). Then
    periods not followed by a digit are removed."""
    out = text
    has_digit_comma = comma_strip.search(text) is not None
    for mark in PUNCTUATION:
        # The test reads the input text, not the text as rewritten so far, as the official loop does.
        if (mark + " " in text or " " + mark in text) or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, _OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """`processDigitArticle`: lowercase, number words to digits, drop articles, restore contraction apostrophes."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def evalai_answer_processor(text: str) -> str:
    """LLaVA's `EvalAIAnswerProcessor.__call__` (what LLaVA's convert scripts upload)."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text, comma_strip=EVALAI_COMMA_STRIP))


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def leave_one_out_accuracy(answer: str, human_answers: list[str]) -> float:
    """Mean over the human answers of min(1, #(the *other* human answers equal to `answer`) / 3).

    vqaEval.py removes one answer dict at a time (each has its own `answer_id`, so exactly one is left out). The loop
    and the summation order are the official ones, so the float result is bit-identical.
    """
    accuracies = []
    for left_out in range(len(human_answers)):
        matches = sum(1 for index, human in enumerate(human_answers) if index != left_out and human == answer)
        accuracies.append(min(1, float(matches) / 3))
    return float(sum(accuracies)) / len(accuracies)


def vqav2_question_accuracy(prediction: str, human_answers: list[str], evalai_preprocess: bool = True) -> float:
    """The accuracy of one question under the rules above."""
    answer = evalai_answer_processor(prediction) if evalai_preprocess else prediction
    answer = _clean_whitespace(answer)
    humans = [_clean_whitespace(human) for human in human_answers]
    if len(set(humans)) > 1:
        humans = [process_digit_article(process_punctuation(human)) for human in humans]
        answer = process_digit_article(process_punctuation(answer))
    return leave_one_out_accuracy(answer, humans)


def _check_inputs(predictions, references) -> None:
    for index, (prediction, humans) in enumerate(zip(predictions, references)):
        if not isinstance(prediction, str):
            raise TypeError(
                f"predictions[{index}] is {prediction!r} ({type(prediction).__name__}); pass the answer text."
            )
        if len(humans) == 0:
            raise ValueError(f"references[{index}] is empty; pass the human answers of the question (10 in VQAv2).")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Vqav2(evaluate.Metric):
    """VQAv2 accuracy: LLaVA's EvalAIAnswerProcessor, then GT-Vision-Lab/VQA vqaEval.py (2021 head)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            codebase_urls=["https://github.com/GT-Vision-Lab/VQA", "https://github.com/haotian-liu/LLaVA"],
            reference_urls=["https://visualqa.org/evaluation.html"],
        )

    def _compute(self, predictions, references, evalai_preprocess: bool = True):
        _check_inputs(predictions, references)
        scores = [
            vqav2_question_accuracy(prediction, list(humans), evalai_preprocess=evalai_preprocess)
            for prediction, humans in zip(predictions, references)
        ]
        return {"accuracy": sum(scores) / len(scores) if scores else 0.0, "per_question": scores}
