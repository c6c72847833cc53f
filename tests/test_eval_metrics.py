"""The `evaluate` metric modules of recipes/metrics, checked against hand-worked examples of each protocol.

Every metric is loaded the way users load it, `evaluate.load(<absolute folder>)`, so the tests exercise the copy that
`evaluate` places in its module cache. Helper functions of a module are reached through that loaded copy.
"""

from __future__ import annotations

import ast
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

evaluate = pytest.importorskip("evaluate")

METRICS_DIR = Path(__file__).resolve().parents[1] / "recipes" / "eval" / "metrics"
METRIC_NAMES = ("vqa_accuracy", "pope", "exact_match", "multiple_choice", "cider")


def _load(name: str):
    metric = evaluate.load(str(METRICS_DIR / name))
    return metric, sys.modules[type(metric).__module__]


@pytest.fixture(scope="module")
def vqa():
    return _load("vqa_accuracy")


@pytest.fixture(scope="module")
def pope():
    return _load("pope")


@pytest.fixture(scope="module")
def exact_match():
    return _load("exact_match")


@pytest.fixture(scope="module")
def multiple_choice():
    return _load("multiple_choice")


@pytest.fixture(scope="module")
def cider():
    return _load("cider")


# ---------------------------------------------------------------------------------------------------------------
# Packaging: evaluate copies each single file into its cache, so it may only import what every user has.


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_module_imports_only_stdlib_numpy_datasets_evaluate(name):
    tree = ast.parse((METRICS_DIR / name / f"{name}.py").read_text())
    allowed = set(sys.stdlib_module_names) | {"numpy", "datasets", "evaluate"}
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{name}.py uses a relative import, which evaluate does not copy"
            imported.add(node.module.split(".")[0])
    assert imported <= allowed, f"{name}.py imports {sorted(imported - allowed)}"
    assert (METRICS_DIR / name / "README.md").is_file()


def test_all_metrics_load_offline_in_a_fresh_cache(tmp_path):
    """Hub offline, empty HF cache, working directory outside the repository: loading by path must still work."""
    script = textwrap.dedent(
        f"""
        import evaluate
        for name in {METRIC_NAMES!r}:
            metric = evaluate.load({str(METRICS_DIR)!r} + "/" + name)
            assert metric.info.description and metric.info.citation and metric.info.inputs_description, name
        print(evaluate.load({str(METRICS_DIR)!r} + "/vqa_accuracy").compute(
            predictions=["Two."], references=[["2", "2", "3", "3", "3", "3", "3", "3", "3", "3"]]))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
    env["HF_HOME"] = str(tmp_path / "hf_home")
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "{'accuracy': 60.0}" in done.stdout
    assert any((tmp_path / "hf_home").rglob("vqa_accuracy.py")), "evaluate did not copy the module into its cache"


# ---------------------------------------------------------------------------------------------------------------
# VQA accuracy


@pytest.mark.parametrize(
    "raw, normalized",
    [
        # The processing steps listed on https://visualqa.org/evaluation.html, one example each.
        ("Two", "2"),  # number words to digits
        ("a dog.", "dog"),  # articles removed, period removed
        ("The Cat", "cat"),  # lowercase, article
        ("isnt", "isn't"),  # a contraction missing its apostrophe gets it back
        ("dont", "don't"),
        ("3.5", "3.5"),  # a period followed by a digit is a decimal point and stays
        ("100,978", "100978"),  # a comma between digits disappears without a space
        ("black/white", "black white"),  # punctuation not touching a space becomes a space
        ("yes !", "yes"),  # punctuation touching a space is deleted
        ("boy's", "boy's"),  # apostrophes are kept (possessives)
        ("2:50 pm", "2:50 pm"),  # colons are kept (times)
        ("  none\n", "0"),
    ],
)
def test_vqa_normalization_examples(vqa, raw, normalized):
    _, module = vqa
    assert module.normalize_vqa_answer(raw) == normalized


def _leave_one_out_by_hand(prediction: str, humans: list[str]) -> float:
    """The official loop: for each human, drop that one and count matches among the 9 others."""
    accs = []
    for dropped in range(len(humans)):
        others = humans[:dropped] + humans[dropped + 1 :]
        accs.append(min(1.0, sum(1 for h in others if h == prediction) / 3))
    return sum(accs) / len(accs)


def test_vqa_soft_accuracy_leave_one_out(vqa):
    # Worked by hand, k humans (of 10) gave the predicted answer:
    #   k=1: dropping the matching human leaves 0 -> 0; dropping one of 9 others leaves 1 -> 1/3; (0 + 9/3)/10 = 0.3
    #   k=2: 2 subsets keep 1 match (1/3), 8 keep 2 (2/3):                       (2/3 + 16/3)/10 = 0.6
    #   k=3: 3 subsets keep 2 matches (2/3), 7 keep 3 (1):                          (2 + 7)/10 = 0.9
    #   k=4: every subset keeps >= 3 matches:                                                     1.0
    # (The simplified "min(1, k/3)" would give 1.0 for k=3; the official average over subsets gives 0.9.)
    metric, _ = vqa
    by_hand = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9, 4: 1.0, 7: 1.0, 10: 1.0}
    for k, expected in by_hand.items():
        humans = ["yes"] * k + ["no"] * (10 - k)
        result = metric.compute(predictions=["Yes"], references=[humans], return_per_sample=True)
        assert result["per_sample"][0] == pytest.approx(expected, abs=1e-12)
        assert result["per_sample"][0] == pytest.approx(_leave_one_out_by_hand("yes", humans), abs=1e-12)
        assert result["accuracy"] == pytest.approx(100 * expected, abs=1e-9)


def test_vqa_corpus_accuracy_is_percent_mean(vqa):
    metric, _ = vqa
    references = [["2"] * 2 + ["3"] * 8, ["red"] * 10, ["isn't"] * 3 + ["is"] * 7]
    result = metric.compute(predictions=["two", "blue", "Isnt"], references=references)
    assert result == {"accuracy": pytest.approx(100 * (0.6 + 0.0 + 0.9) / 3)}


def test_vqa_references_follow_the_official_script(vqa):
    metric, _ = vqa
    # The official script only punctuation-processes human answers (VQAv2 annotations are already normalised), so an
    # unnormalised "two" never matches the prediction "2"; normalize_references=True applies the full pipeline.
    humans = ["two"] * 4 + ["three"] * 6
    assert metric.compute(predictions=["two"], references=[humans])["accuracy"] == 0.0
    assert metric.compute(predictions=["two"], references=[humans], normalize_references=True)["accuracy"] == 100.0
    # Identical human answers are not processed at all: "dog." stays "dog." and the prediction "dog" misses.
    assert metric.compute(predictions=["dog"], references=[["dog."] * 10])["accuracy"] == 0.0


def test_vqa_llava_answer_processing_modes(vqa):
    metric, module = vqa
    # EvalAIAnswerProcessor (LLaVA): lowercase, drop "," and "?", split "'s", then the official steps.
    assert module.normalize_evalai_answer("The man's hat, red?") == "man 's hat red"
    assert module.normalize_evalai_answer("Two dogs.") == "2 dogs"
    humans = ["man's"] * 10
    by_mode = {
        mode: metric.compute(predictions=["Man's."], references=[humans], answer_processing=mode)["accuracy"]
        for mode in ("vqa", "llava_vqav2", "textvqa")
    }
    # vqa: "man's" == "man's"; llava_vqav2: the prediction becomes "man 's", the official references stay "man's";
    # textvqa: both sides become "man 's".
    assert by_mode == {"vqa": 100.0, "llava_vqav2": 0.0, "textvqa": 100.0}


def test_vqa_rejects_bad_inputs(vqa):
    metric, _ = vqa
    with pytest.raises(ValueError, match="exact_match"):
        metric.compute(predictions=["yes"], references=[["yes"]])
    with pytest.raises(ValueError, match="answer_processing"):
        metric.compute(predictions=["yes"], references=[["yes", "no"]], answer_processing="squad")


# ---------------------------------------------------------------------------------------------------------------
# POPE


@pytest.mark.parametrize(
    "answer, parsed",
    [
        ("Yes, there is a dog in the image.", "yes"),
        ("No, there is no cat in the image.", "no"),
        ("No.", "no"),
        ("There is not a cat.", "no"),
        ("Yes. No other animal is visible.", "yes"),  # only the first sentence counts
        ("no", "no"),
        ("NO", "yes"),  # LLaVA's rule looks for the exact words "No", "no", "not"
        ("Nope", "yes"),
        ("", "yes"),
    ],
)
def test_pope_parsing_follows_llava(pope, answer, parsed):
    _, module = pope
    assert module.parse_yes_no(answer) == parsed


def test_pope_confusion_matrix_by_hand(pope):
    metric, _ = pope
    # Labels "yes": read yes, yes, yes, no, no -> TP TP TP FN FN. Labels "no": yes, no, no, no, no -> FP TN TN TN TN.
    predictions = ["Yes.", "Yes, it is.", "yes", "No.", "No, there is not."]
    predictions += ["Yes.", "No.", "no", "There is no car.", "No"]
    references = ["yes"] * 5 + ["no"] * 5
    result = metric.compute(predictions=predictions, references=references)
    # TP=3 FP=1 TN=4 FN=2: accuracy 7/10, precision 3/4, recall 3/5, F1 = 2*(3/4)(3/5)/(3/4+3/5) = 0.9/1.35 = 2/3,
    # yes-ratio = 4/10.
    assert (result["tp"], result["fp"], result["tn"], result["fn"]) == (3, 1, 4, 2)
    assert result["accuracy"] == pytest.approx(0.7)
    assert result["precision"] == pytest.approx(0.75)
    assert result["recall"] == pytest.approx(0.6)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["yes_ratio"] == pytest.approx(0.4)


def test_pope_all_no_has_zero_precision_and_bad_labels_raise(pope):
    metric, _ = pope
    result = metric.compute(predictions=["No", "no"], references=["yes", "no"])
    assert (result["precision"], result["recall"], result["f1"], result["yes_ratio"]) == (0.0, 0.0, 0.0, 0.0)
    assert result["accuracy"] == 0.5
    with pytest.raises(ValueError, match="references\\[1\\]"):
        metric.compute(predictions=["yes", "yes"], references=["yes", "maybe"])


# ---------------------------------------------------------------------------------------------------------------
# Exact match


def test_exact_match_normalizations(exact_match):
    metric, _ = exact_match
    predictions = ["Yes.", "the left", "Left...", " bowl ", "A red cube."]
    references = ["yes", "left", "left", "bowl", "red cube"]
    # gqa (LLaVA's convert_gqa_for_eval: rstrip('.').lower()): 1, 0 (article kept), 1, 1, 0
    gqa = metric.compute(predictions=predictions, references=references, return_per_sample=True)
    assert gqa["per_sample"] == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert gqa["exact_match"] == pytest.approx(3 / 5)
    lenient = metric.compute(predictions=predictions, references=references, normalization="lenient")
    assert lenient["exact_match"] == 1.0
    none = metric.compute(predictions=predictions, references=references, normalization="none")
    assert none["exact_match"] == 0.0
    with pytest.raises(ValueError, match="normalization"):
        metric.compute(predictions=["a"], references=["a"], normalization="squad")


# ---------------------------------------------------------------------------------------------------------------
# Multiple choice


@pytest.mark.parametrize(
    "answer, choices, letter",
    [
        ("C", None, "C"),
        ("C.", None, "C"),
        ("B)", None, "B"),
        ("(B)", None, "B"),
        ("A. a cat", None, "A"),  # LLaVA ScienceQA: letter followed by ". "
        ("Because of gravity. The answer is C.", None, "C"),  # LLaVA ScienceQA chain of thought
        ("the answer is: (D)", None, "D"),
        ("A is wrong and so is B. The answer is C.", None, "C"),  # the explicit statement beats stray letters
        ("I think B is correct.", None, "B"),  # MMBench: one standalone option letter
        ("A or B", None, None),  # two letters: ambiguous
        ("A bird is flying over the water", ["cat", "bird"], "B"),  # "A" is the article; the option text decides
        ("It is a cat", ["cat", "dog"], "A"),
        ("E", ["cat", "dog"], None),  # a letter past the last option is not an answer
        ("I cannot tell", ["cat", "dog"], None),
    ],
)
def test_multiple_choice_parsing(multiple_choice, answer, choices, letter):
    _, module = multiple_choice
    letters = "ABCDE" if choices is None else "ABCDE"[: len(choices)]
    assert module.parse_choice(answer, letters, choices) == letter


def test_multiple_choice_accuracy_and_unparseable(multiple_choice):
    metric, _ = multiple_choice
    result = metric.compute(
        predictions=["B)", "The answer is C.", "a cat", "I am not sure", "D"],
        references=["B", "C", "A", "D", "A"],
        choices=[["dog", "cat"], ["x", "y", "z"], ["cat", "dog"], ["1", "2", "3", "4"], ["1", "2", "3", "4"]],
        return_per_sample=True,
    )
    assert result["parsed"] == ["B", "C", "A", None, "D"]
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["unparseable"] == 1
    with pytest.raises(ValueError, match="references\\[0\\]"):
        metric.compute(predictions=["A"], references=["0"])
    with pytest.raises(ValueError, match="choices"):
        metric.compute(predictions=["A", "B"], references=["A", "B"], choices=[["x", "y"]])


# ---------------------------------------------------------------------------------------------------------------
# CIDEr-D


def _cider_d_reference(candidates, references, n=4, sigma=6.0):
    """Independent float64 CIDEr-D from the equations: dense tf-idf vectors per n-gram order over a vocabulary.

    idf(g) = log N - log max(1, df(g)), df over the references of the N images; sim_n = sum min(c, r) r / (|c| |r|)
    times exp(-(l_c - l_r)^2 / 2 sigma^2) with l = #bigrams = max(0, words - 1); score = 10 mean_n mean_refs sim_n.
    """

    def grams(words, order):
        return [tuple(words[i : i + order]) for i in range(len(words) - order + 1)]

    num_images = len(candidates)
    scores = np.zeros(num_images, dtype=np.float64)
    for order in range(1, n + 1):
        vocabulary = {g for words in candidates for g in grams(words, order)}
        vocabulary |= {g for refs in references for words in refs for g in grams(words, order)}
        index = {g: i for i, g in enumerate(sorted(vocabulary))}
        df = np.zeros(len(index))
        for refs in references:
            for g in {g for words in refs for g in grams(words, order)}:
                df[index[g]] += 1
        idf = np.log(float(num_images)) - np.log(np.maximum(1.0, df))

        def tfidf(words, order=order, index=index, idf=idf):
            tf = np.zeros(len(index))
            for g in grams(words, order):
                tf[index[g]] += 1
            return tf * idf

        for image, (cand, refs) in enumerate(zip(candidates, references)):
            c = tfidf(cand)
            for ref in refs:
                r = tfidf(ref)
                value = float(np.sum(np.minimum(c, r) * r))
                if np.linalg.norm(c) != 0 and np.linalg.norm(r) != 0:
                    value /= np.linalg.norm(c) * np.linalg.norm(r)
                delta = max(0, len(cand) - 1) - max(0, len(ref) - 1)
                scores[image] += value * np.exp(-(delta**2) / (2 * sigma**2)) / len(refs) / n * 10.0
    return scores


def test_cider_hand_worked_example(cider):
    metric, _ = cider
    # Two images, one reference each, so N = 2 and every reference n-gram has df = 1: idf = w = ln 2 - ln 1 = ln 2.
    # An n-gram missing from all references has df = 0 -> max(1, 0) = 1, so it also weighs w (pycocoevalcap).
    # Image 1, candidate "red red" vs reference "red cube" (lengths 1 and 1 bigram: no length penalty):
    #   unigrams: c = {red: 2w}, r = {red: w, cube: w}; clipped dot = min(2w, w) * w = w^2;
    #             |c| = 2w, |r| = sqrt(2) w -> sim_1 = 1 / (2 sqrt 2)   (unclipped it would be 1 / sqrt 2)
    #   bigrams: (red, red) is not in the reference -> 0; trigrams and 4-grams are empty -> 0.
    #   score_1 = 10 * (1 / (2 sqrt 2)) / 4
    # Image 2, candidate "the blue ball" vs reference "blue ball" (2 vs 1 bigrams: penalty exp(-1/72)):
    #   unigrams: dot = 2 w^2, |c| = sqrt 3 w, |r| = sqrt 2 w -> 2 / sqrt 6
    #   bigrams:  dot = w^2,   |c| = sqrt 2 w, |r| = w        -> 1 / sqrt 2
    #   score_2 = 10 * exp(-1/72) * (2 / sqrt 6 + 1 / sqrt 2) / 4
    score_1 = 10 * (1 / (2 * math.sqrt(2))) / 4
    score_2 = 10 * math.exp(-1 / 72) * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4
    result = metric.compute(
        predictions=["Red red.", "The blue ball"], references=[["red cube"], ["blue ball"]], return_per_sample=True
    )
    assert result["scores"] == pytest.approx([score_1, score_2], abs=1e-12)
    assert result["cider"] == pytest.approx((score_1 + score_2) / 2, abs=1e-12)


def test_cider_matches_independent_float64_reference(cider):
    metric, module = cider
    predictions = [
        "a man riding a red bike down the street",
        "two dogs play with a ball on the grass",
        "a plate of food with broccoli",
        "a cat",
    ]
    references = [
        ["a man rides a bike on a street", "a person riding a red bicycle down a road", "man on a bike"],
        ["two dogs playing with a ball in the grass", "dogs play on a lawn with a ball"],
        ["a plate with broccoli and rice", "food on a white plate", "a plate of food", "broccoli on a plate"],
        ["a cat sleeping on a couch", "a black cat lying on a sofa"],
    ]
    result = metric.compute(predictions=predictions, references=references, return_per_sample=True)
    expected = _cider_d_reference(
        [module.tokenize_caption(p) for p in predictions],
        [[module.tokenize_caption(r) for r in refs] for refs in references],
    )
    np.testing.assert_allclose(result["scores"], expected, rtol=1e-12, atol=1e-12)
    assert result["cider"] == pytest.approx(expected.mean(), abs=1e-12)
    assert 0 < result["cider"] < 10


def test_cider_identical_disjoint_and_single_image(cider):
    metric, _ = cider
    captions = ["a red cube on a wooden table", "two blue balls next to a green cone", "an empty white room at night"]
    identical = metric.compute(predictions=captions, references=[[c] for c in captions], return_per_sample=True)
    assert identical["scores"] == pytest.approx([10.0, 10.0, 10.0], abs=1e-12)
    disjoint = metric.compute(
        predictions=["purple zebra dancing", "seven loud trumpets", "frozen lake"], references=[[c] for c in captions]
    )
    assert disjoint["cider"] == 0.0
    # A single image: log N = 0 makes every idf weight 0, as in pycocoevalcap.
    assert metric.compute(predictions=[captions[0]], references=[[captions[0]]])["cider"] == 0.0
    with pytest.raises(ValueError, match="references\\[0\\]"):
        metric.compute(predictions=["a cat"], references=[[]])


def test_cider_tokenizer_approximates_ptb(cider):
    _, module = cider
    assert module.tokenize_caption("Don't look! The dog's ball, black-and-white (1,000 units) at 2:30.") == [
        "do", "n't", "look", "the", "dog", "'s", "ball", "black-and-white", "1,000", "units", "at", "2:30",
    ]  # fmt: skip
