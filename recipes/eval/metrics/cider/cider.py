"""CIDEr-D for captions, as computed by pycocoevalcap, with a pure-Python tokenizer instead of Java's PTBTokenizer.

This is an `evaluate` module loaded by path. It imports only the standard library, `datasets` and `evaluate`
because `evaluate` copies this single file into its module cache.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

import datasets
import evaluate

_CITATION = """\
@inproceedings{vedantam2015cider,
  title={{CIDEr}: Consensus-based Image Description Evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C Lawrence and Parikh, Devi},
  booktitle={CVPR},
  year={2015}
}
"""

_DESCRIPTION = """\
CIDEr-D, the "CIDEr" of the COCO caption evaluation (pycocoevalcap `cider_scorer.py`), reproduced step by step:

- each caption becomes counts of its 1- to 4-grams;
- document frequency df(g) = number of evaluated images whose *references* contain g; idf(g) = log(N) -
  log(max(1, df(g))) with N the number of images (so an n-gram absent from all references gets the full log N);
- per order n, tf-idf vectors of the candidate and of each reference; the similarity is
  sum_g min(c_g, r_g) * r_g / (|c| |r|) (candidate weights clipped by the reference's), multiplied by the length
  penalty exp(-(l_c - l_r)^2 / (2 sigma^2)), sigma = 6;
- the score of an image is 10 * mean over n of (sum over references of the similarity) / #references; the corpus
  score is the mean over images.

Like pycocoevalcap, the "length" in the penalty is the number of bigrams of a caption (words - 1), the idf comes
from the evaluated set itself (scores depend on which images are evaluated together; a single image always scores
0 because log N = 0), and identical captions score 10 only when they have at least 4 words with non-zero idf.

Tokenisation: pycocoevalcap runs Stanford's PTBTokenizer (Java) and drops punctuation tokens. This module uses a
documented pure-Python approximation: lowercase; split the clitics "n't", "'s", "'re", "'ve", "'ll", "'d", "'m" off
their word ("don't" -> "do n't", as PTB does); keep runs of letters/digits, words with inner hyphens or apostrophes
("black-and-white", "o'clock") and numbers with inner ".", "," or ":" ("3.5", "1,000", "2:30") as tokens; drop every
other character (punctuation). Scores match
pycocoevalcap whenever the two tokenizations agree, which is the case for ordinary captions. Pass
`tokenize=False` to split on whitespace only (e.g. for text already tokenized by PTBTokenizer).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): one candidate caption per image.
    references (`list[list[str]]`): the reference captions of each image (5 for COCO), at least one.
    n (`int`, defaults to 4): largest n-gram order.
    sigma (`float`, defaults to 6.0): standard deviation of the Gaussian length penalty.
    tokenize (`bool`, defaults to `True`): apply the tokenizer described above; `False` splits on whitespace only.
    return_per_sample (`bool`, defaults to `False`): also return `"scores"`, the CIDEr-D of each image.
Returns:
    cider (`float`): corpus CIDEr-D, the mean over images (COCO papers print it x 100, e.g. 1.10 -> "110").
    scores (`list[float]`, only with `return_per_sample=True`).
Examples:
    >>> cider = evaluate.load("recipes/metrics/cider")
    >>> cider.compute(
    ...     predictions=["a red cube on a table", "two blue balls on the grass"],
    ...     references=[["a red cube on a table"], ["two blue balls on the grass"]],
    ... )
    {'cider': 10.0}
"""

_CLITIC_NT = re.compile(r"(?<=\w)(n't)\b")
_CLITIC_APOSTROPHE = re.compile(r"(?<=\w)('(?:s|re|ve|ll|d|m))\b")
_TOKEN = re.compile(r"n't|\d+(?:[.,:]\d+)+|[^\W_]+(?:['-][^\W_]+)*|'[^\W_]+")


def tokenize_caption(text: str) -> list[str]:
    """Pure-Python approximation of pycocoevalcap's PTBTokenizer + punctuation removal (see the description)."""
    text = text.lower()
    text = _CLITIC_NT.sub(r" \1", text)
    text = _CLITIC_APOSTROPHE.sub(r" \1", text)
    return _TOKEN.findall(text)


def ngram_counts(words: list[str], n: int) -> Counter:
    """Counts of all 1..n-grams of `words` (pycocoevalcap `precook`)."""
    counts = Counter()
    for order in range(1, n + 1):
        for start in range(len(words) - order + 1):
            counts[tuple(words[start : start + order])] += 1
    return counts


def _tfidf_vector(counts: Counter, document_frequency: dict, log_num_images: float, n: int):
    """Per-order tf-idf vectors, their norms, and the caption "length" (pycocoevalcap `counts2vec`)."""
    vectors = [defaultdict(float) for _ in range(n)]
    norms = [0.0] * n
    length = 0
    for ngram, term_frequency in counts.items():
        order = len(ngram) - 1
        idf = log_num_images - math.log(max(1.0, document_frequency.get(ngram, 0.0)))
        vectors[order][ngram] = float(term_frequency) * idf
        norms[order] += vectors[order][ngram] ** 2
        # pycocoevalcap counts the length on order index 1, i.e. the number of bigrams (kept as is: differences
        # equal word-count differences except when a caption is empty).
        if order == 1:
            length += term_frequency
    return vectors, [math.sqrt(value) for value in norms], length


def _similarity(candidate, reference, sigma: float, n: int) -> list[float]:
    """Clipped cosine similarity per order times the Gaussian length penalty (pycocoevalcap `sim`)."""
    vec_c, norm_c, len_c = candidate
    vec_r, norm_r, len_r = reference
    delta = float(len_c - len_r)
    penalty = math.exp(-(delta**2) / (2 * sigma**2))
    values = []
    for order in range(n):
        value = 0.0
        for ngram, weight in vec_c[order].items():
            ref_weight = vec_r[order].get(ngram, 0.0)
            value += min(weight, ref_weight) * ref_weight
        if norm_c[order] != 0 and norm_r[order] != 0:
            value /= norm_c[order] * norm_r[order]
        values.append(value * penalty)
    return values


def cider_d(
    candidates: list[list[str]], references: list[list[list[str]]], n: int = 4, sigma: float = 6.0
) -> list[float]:
    """CIDEr-D of each image from tokenized candidates and references (pycocoevalcap `CiderScorer`)."""
    candidate_counts = [ngram_counts(words, n) for words in candidates]
    reference_counts = [[ngram_counts(words, n) for words in refs] for refs in references]
    document_frequency = Counter()
    for refs in reference_counts:
        for ngram in {ngram for counts in refs for ngram in counts}:
            document_frequency[ngram] += 1
    log_num_images = math.log(float(len(reference_counts)))
    scores = []
    for counts, refs in zip(candidate_counts, reference_counts):
        candidate = _tfidf_vector(counts, document_frequency, log_num_images, n)
        summed = [0.0] * n
        for ref in refs:
            similarity = _similarity(candidate, _tfidf_vector(ref, document_frequency, log_num_images, n), sigma, n)
            summed = [total + value for total, value in zip(summed, similarity)]
        scores.append(10.0 * (sum(summed) / n) / len(refs))
    return scores


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Cider(evaluate.Metric):
    """CIDEr-D (pycocoevalcap) with a pure-Python tokenizer."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            codebase_urls=["https://github.com/tylin/coco-caption", "https://github.com/salaniz/pycocoevalcap"],
            reference_urls=["https://arxiv.org/abs/1411.5726"],
        )

    def _compute(
        self,
        predictions,
        references,
        n: int = 4,
        sigma: float = 6.0,
        tokenize: bool = True,
        return_per_sample: bool = False,
    ):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r} must be a positive integer (CIDEr-D uses 4).")
        if not sigma > 0:
            raise ValueError(f"sigma={sigma!r} must be positive (CIDEr-D uses 6.0).")
        for index, refs in enumerate(references):
            if len(refs) == 0:
                raise ValueError(f"references[{index}] is empty; every image needs at least one reference caption.")
        split = tokenize_caption if tokenize else str.split
        scores = cider_d(
            [split(prediction) for prediction in predictions],
            [[split(ref) for ref in refs] for refs in references],
            n=n,
            sigma=float(sigma),
        )
        result = {"cider": sum(scores) / len(scores) if scores else 0.0}
        if return_per_sample:
            result["scores"] = scores
        return result
