"""TextVQA accuracy exactly as LLaVA's `llava/eval/m4c_evaluator.py` `TextVQAAccuracyEvaluator` computes it.

This is an `evaluate` module loaded by path. `evaluate` copies this single file into its module cache, so it imports
only the standard library, `datasets` and `evaluate`, and repeats the answer-processing tables it needs.
"""

from __future__ import annotations

import re

import datasets
import evaluate

_CITATION = """\
@inproceedings{singh2019towards,
  title={Towards {VQA} Models That Can Read},
  author={Singh, Amanpreet and Natarajan, Vivek and Shah, Meet and Jiang, Yu and Chen, Xinlei and Batra, Dhruv and
          Parikh, Devi and Rohrbach, Marcus},
  booktitle={CVPR},
  year={2019}
}
"""

_DESCRIPTION = """\
TextVQA accuracy as LLaVA's `llava/eval/eval_textvqa.py` reports it (LLaVA-1.5 and SQ-LLaVA, val split), with
`TextVQAAccuracyEvaluator` of `llava/eval/m4c_evaluator.py` (from MMF):

- the answer and each of the 10 human answers go through `EvalAIAnswerProcessor` (lowercase; drop "," and "?";
  "'s" becomes " 's"; punctuation, number words, articles, contractions as in the VQA scorer);
- every distinct processed human answer u scores the mean over the 10 humans h of min(1, #(other humans whose
  processed answer is u) / 3); the question scores the score of the processed model answer, 0 if no human gave it;
- the accuracy is the mean over questions.

Exactly 10 human answers per question are required, as the evaluator asserts.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the model's raw answers (the `text` of LLaVA's answer file), one per question.
    references (`list[list[str]]`): the 10 raw human `answers` of each question in `TextVQA_0.5.1_val.json`.
Returns:
    accuracy (`float`): mean accuracy over questions, in [0, 1].
    per_question (`list[float]`): the accuracy of each question, aligned with `predictions`.
Examples:
    >>> textvqa = evaluate.load("recipes/eval/metrics/textvqa")
    >>> textvqa.compute(predictions=["Coca-Cola"], references=[["coca cola"] * 2 + ["pepsi"] * 8])
    {'accuracy': 0.6, 'per_question': [0.6]}
"""

# MMF's EvalAIAnswerProcessor tables (identical to GT-Vision-Lab/VQA vqaEval.py's), kept verbatim with
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


def unique_answer_scores(human_answers: list[str]) -> dict[str, float]:
    """`TextVQAAccuracyEvaluator._compute_answer_scores`: the soft score of each distinct processed human answer.

    The loop and the summation order are the evaluator's, so the floats are bit-identical.
    """
    answers = [evalai_answer_processor(answer) for answer in human_answers]
    scores = {}
    for unique in set(answers):
        accuracies = []
        for left_out in range(len(answers)):
            matches = sum(1 for index, answer in enumerate(answers) if index != left_out and answer == unique)
            accuracies.append(min(1, float(matches) / 3))
        scores[unique] = sum(accuracies) / len(accuracies)
    return scores


def textvqa_question_accuracy(prediction: str, human_answers: list[str]) -> float:
    """The score of one question: the soft score of the processed answer among the processed human answers."""
    return unique_answer_scores(human_answers).get(evalai_answer_processor(prediction), 0.0)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Textvqa(evaluate.Metric):
    """TextVQA accuracy: LLaVA's TextVQAAccuracyEvaluator (m4c_evaluator.py)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            codebase_urls=["https://github.com/haotian-liu/LLaVA", "https://github.com/facebookresearch/mmf"],
            reference_urls=["https://textvqa.org/"],
        )

    def _compute(self, predictions, references):
        for index, (prediction, humans) in enumerate(zip(predictions, references)):
            if not isinstance(prediction, str):
                raise TypeError(
                    f"predictions[{index}] is {prediction!r} ({type(prediction).__name__}); pass the answer text."
                )
            if len(humans) != 10:
                raise ValueError(
                    f"references[{index}] has {len(humans)} answers; TextVQA's evaluator requires the 10 human "
                    "answers of each question (the `answers` of TextVQA_0.5.1_val.json)."
                )
        scores = [
            textvqa_question_accuracy(prediction, list(humans)) for prediction, humans in zip(predictions, references)
        ]
        return {"accuracy": sum(scores) / len(scores) if scores else 0.0, "per_question": scores}
