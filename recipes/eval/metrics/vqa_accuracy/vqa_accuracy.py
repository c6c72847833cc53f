"""VQA accuracy: the VQAv2 soft accuracy against 10 human answers, with the official answer normalisation.

This is an `evaluate` module loaded by path (the Hub's metric scripts cannot be fetched offline). It imports only the
standard library, `datasets` and `evaluate` because `evaluate` copies this single file into its module cache.
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
VQA accuracy (VQAv2 protocol). For each question the predicted answer is normalised and compared with the human
answers (usually 10): with the leave-one-out rule of the official evaluation script, the score of a question is the
mean over the 10 subsets of 9 humans of min(1, #humans in the subset who gave the predicted answer / 3). So 0, 1, 2,
3 and >= 4 matching humans give 0.0, 0.3, 0.6, 0.9 and 1.0. The reported accuracy is the mean over questions, in
percent (the official script reports 100 * mean, rounded to 2 decimals; this module does not round).

`answer_processing="vqa"` (default) reproduces the official VQAv2 script (GT-Vision-Lab/VQA `vqaEval.py`): the
prediction goes through `processPunctuation` then `processDigitArticle` (lowercase, number words to digits, articles
removed, missing contraction apostrophes restored); the human answers go through `processPunctuation` only, and only
when they are not all identical (the VQAv2 annotations are already normalised). Set `normalize_references=True`
for references that are not (the prediction pipeline is then applied to every reference as well).

`answer_processing="llava_vqav2"` reproduces LLaVA's VQAv2 numbers: LLaVA runs each prediction through
`EvalAIAnswerProcessor` (`llava/eval/m4c_evaluator.py`, from MMF: lowercase, commas and question marks removed, "'s"
split off, then the same punctuation, digit and article steps) before submission, and the server then scores it
with the official rules above.

`answer_processing="textvqa"` reproduces LLaVA's TextVQA evaluation (`TextVQAAccuracyEvaluator`): the prediction
and every human answer go through `EvalAIAnswerProcessor`, then the same leave-one-out soft score.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the model's answers, one per question.
    references (`list[list[str]]`): the human answers of each question (10 for VQAv2 and TextVQA). At least 2 are
        needed: with 1 answer the leave-one-out rule leaves no human to match, so every score would be 0 (use the
        `exact_match` metric for single-reference data).
    answer_processing (`str`, defaults to `"vqa"`): `"vqa"` for the official VQAv2 script, `"llava_vqav2"` for
        LLaVA's `EvalAIAnswerProcessor` on the prediction followed by the official script, `"textvqa"` for LLaVA's
        TextVQA evaluator (`EvalAIAnswerProcessor` on the prediction and on every human answer).
    normalize_references (`bool`, defaults to `False`): with `"vqa"` or `"llava_vqav2"`, also apply the official
        prediction normalisation to every reference (for references that, unlike the VQAv2 annotations, are not
        already normalised, e.g. "Two" or "A dog"). Ignored by `"textvqa"`, which always normalises them.
    return_per_sample (`bool`, defaults to `False`): also return `"per_sample"`, the score of each question in [0, 1].
Returns:
    accuracy (`float`): 100 * mean soft accuracy over questions, in [0, 100].
    per_sample (`list[float]`, only with `return_per_sample=True`): soft accuracy of each question in [0, 1].
Examples:
    >>> vqa = evaluate.load("recipes/metrics/vqa_accuracy")
    >>> humans = ["2"] * 2 + ["3"] * 8
    >>> vqa.compute(predictions=["Two."], references=[humans])
    {'accuracy': 60.0}
"""

# The tables below are the official VQAv2 evaluation's (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/
# vqaEval.py), kept verbatim, quirks included: keys with capitals ("Im") never match because words are lowercased
# first, and "somebody'd" maps to "somebodyd". Changing them would change the scores.
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
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
# The official pattern is "(?!<=\d)(\.)(?!\d)": the first group is a (typo'd) lookahead, so in effect a period is
# removed unless a digit follows it ("3.5" keeps its period, "dog." loses it). Kept verbatim.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
# MMF / EvalAI variant of the digit-comma test (same decision on any text with a comma between two digits).
EVALAI_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
# The official script calls `periodStrip.sub("", text, re.UNICODE)`, which passes re.UNICODE (32) as `count`: at most
# 32 periods are removed. Reproduced for exactness (no real answer has more).
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)
ANSWER_PROCESSING = ("vqa", "llava_vqav2", "textvqa")


def process_punctuation(text: str, comma_strip: re.Pattern = COMMA_STRIP) -> str:
    """`processPunctuation` of the official script.

    A punctuation mark is deleted when it touches a space somewhere in the text or when the text has a comma between
    two digits ("100,978" -> "100978"); otherwise it is replaced by a space ("black/white" -> "black white"). Then
    periods not followed by a digit are removed.
    """
    out = text
    has_digit_comma = comma_strip.search(text) is not None
    for mark in PUNCTUATION:
        # The test looks at the *input* text, not at the text as rewritten so far, exactly as the official script.
        if (mark + " " in text or " " + mark in text) or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, _OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """`processDigitArticle` of the official script: lowercase, number words to digits, drop articles, restore
    contraction apostrophes ("isnt" -> "isn't")."""
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_vqa_answer(text: str) -> str:
    """The official normalisation of a predicted answer: whitespace cleanup, punctuation, digits/articles."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def normalize_evalai_answer(text: str) -> str:
    """LLaVA's `EvalAIAnswerProcessor` (MMF): the normalisation LLaVA applies to TextVQA answers and to VQAv2
    predictions before submission."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = process_punctuation(text, comma_strip=EVALAI_COMMA_STRIP)
    return process_digit_article(text)


def leave_one_out_accuracy(answer: str, human_answers: list[str]) -> float:
    """Mean over the len(human_answers) leave-one-out subsets of min(1, #matches in the subset / 3).

    Removing a matching human leaves `matches - 1` matches, removing any other leaves `matches`, which is what the
    official loop over `otherGTAns` computes.
    """
    matches = sum(1 for human in human_answers if human == answer)
    total = len(human_answers)
    with_one_removed = matches * min(1.0, (matches - 1) / 3) + (total - matches) * min(1.0, matches / 3)
    return with_one_removed / total


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VqaAccuracy(evaluate.Metric):
    """VQAv2 soft accuracy with the official answer normalisation."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            codebase_urls=["https://github.com/GT-Vision-Lab/VQA"],
            reference_urls=["https://visualqa.org/evaluation.html"],
        )

    def _compute(
        self,
        predictions,
        references,
        answer_processing: str = "vqa",
        normalize_references: bool = False,
        return_per_sample: bool = False,
    ):
        if answer_processing not in ANSWER_PROCESSING:
            raise ValueError(
                f"answer_processing={answer_processing!r} is not supported: use one of {ANSWER_PROCESSING} "
                "('vqa': official VQAv2 script, 'llava_vqav2': LLaVA's VQAv2 submission, 'textvqa': LLaVA's TextVQA)."
            )
        scores = []
        for index, (prediction, humans) in enumerate(zip(predictions, references)):
            if len(humans) < 2:
                raise ValueError(
                    f"references[{index}] has {len(humans)} answer(s); VQA accuracy needs the human answers of each "
                    "question (10 in VQAv2): with fewer than 2 the leave-one-out score is always 0. Use the "
                    "exact_match metric for single-reference data."
                )
            if answer_processing == "textvqa":
                answer = normalize_evalai_answer(prediction)
                humans = [normalize_evalai_answer(human) for human in humans]
            else:
                if answer_processing == "llava_vqav2":
                    prediction = normalize_evalai_answer(prediction)
                answer = normalize_vqa_answer(prediction)
                if normalize_references:
                    humans = [normalize_vqa_answer(human) for human in humans]
                elif len(set(humans)) > 1:
                    # Official behaviour: references are only punctuation-processed, and only when they disagree.
                    humans = [process_punctuation(human) for human in humans]
            scores.append(leave_one_out_accuracy(answer, list(humans)))
        result = {"accuracy": 100.0 * sum(scores) / len(scores) if scores else 0.0}
        if return_per_sample:
            result["per_sample"] = scores
        return result
