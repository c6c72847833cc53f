"""The `evaluate` metric modules of recipes/eval/metrics, checked against hand-worked cases of each official rule.

Every metric is loaded the way users load it, `evaluate.load(<absolute folder>)`, so the tests exercise the copy that
`evaluate` places in its module cache; helper functions of a module are reached through that loaded copy. Each case
says why it scores what it scores, worked out by hand from the official scripts' rules (cited in each module).
"""

from __future__ import annotations

import ast
import itertools
import json
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
METRIC_NAMES = (
    "vqav2", "vizwiz", "textvqa", "gqa", "pope", "scienceqa", "mmbench", "exact_match", "cider",
)  # fmt: skip
LLAVA_MIRROR = Path("/work/.mirror/haotian-liu+LLaVA/repo")


def _load(name: str):
    metric = evaluate.load(str(METRICS_DIR / name))
    return metric, sys.modules[type(metric).__module__]


def _fixture(name):
    @pytest.fixture(scope="module")
    def loaded():
        return _load(name)

    return loaded


vqav2 = _fixture("vqav2")
vizwiz = _fixture("vizwiz")
textvqa = _fixture("textvqa")
gqa = _fixture("gqa")
pope = _fixture("pope")
scienceqa = _fixture("scienceqa")
mmbench = _fixture("mmbench")
exact_match = _fixture("exact_match")
cider = _fixture("cider")


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


def test_every_module_folder_is_tested():
    folders = {path.name for path in METRICS_DIR.iterdir() if path.is_dir() and not path.name.startswith((".", "_"))}
    assert folders == set(METRIC_NAMES)


def test_all_metrics_load_offline_in_a_fresh_cache(tmp_path):
    """Hub offline, empty HF cache, working directory outside the repository: loading by path must still work."""
    script = textwrap.dedent(
        f"""
        import evaluate
        for name in {METRIC_NAMES!r}:
            metric = evaluate.load({str(METRICS_DIR)!r} + "/" + name)
            assert metric.info.description and metric.info.citation and metric.info.inputs_description, name
        print(evaluate.load({str(METRICS_DIR)!r} + "/vqav2").compute(
            predictions=["Two."], references=[["2", "2", "3", "3", "3", "3", "3", "3", "3", "3"]]))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
    env["HF_HOME"] = str(tmp_path / "hf_home")
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "{'accuracy': 0.6, 'per_question': [0.6]}" in done.stdout
    assert any((tmp_path / "hf_home").rglob("vqav2.py")), "evaluate did not copy the module into its cache"


def _leave_one_out_by_hand(answer, humans):
    """min(1, matches among the other humans / 3), averaged over which human is left out (the VQA rule)."""
    return sum(
        min(1.0, sum(h == answer for j, h in enumerate(humans) if j != i) / 3) for i in range(len(humans))
    ) / len(humans)


# ---------------------------------------------------------------------------------------------------------------
# VQAv2: EvalAIAnswerProcessor (LLaVA's upload), then vqaEval.py at its 2021 head


@pytest.mark.parametrize(
    "raw, processed",
    [
        ("Two dogs.", "2 dogs"),  # lowercase, number word to digit, final period removed
        ("The man's hat, red?", "man 's hat red"),  # "," and "?" dropped, "'s" split off, article dropped
        ("100,978", "100978"),  # every comma is deleted before the punctuation step
        ("black/white", "black white"),  # "/" touching no space becomes a space
        ("yes / no", "yes no"),  # "/" touching a space is deleted
        ("3.5", "3.5"),  # a period followed by a digit stays
        ("isnt", "isn't"),  # a contraction missing its apostrophe gets it back
        ("  A\tcat\n", "cat"),  # tabs/newlines are spaces; stripped; article dropped
    ],
)
def test_vqav2_evalai_answer_processor(vqav2, raw, processed):
    _, module = vqav2
    assert module.evalai_answer_processor(raw) == processed


def test_vqav2_leave_one_out_scores_by_hand(vqav2):
    metric, _ = vqav2
    # k of 10 humans said "yes". Leaving out one of the k leaves k-1 matches, leaving out another leaves k:
    #   k=0: 0                                        k=1: 9 subsets keep 1 match (1/3): 9/3/10 = 0.3
    #   k=2: 2 keep 1 (1/3), 8 keep 2 (2/3): (2/3 + 16/3)/10 = 0.6
    #   k=3: 3 keep 2 (2/3), 7 keep 3 (1): (2 + 7)/10 = 0.9     k>=4: every subset keeps >= 3: 1.0
    for k, expected in {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9, 4: 1.0, 10: 1.0}.items():
        humans = ["yes"] * k + ["no"] * (10 - k)
        result = metric.compute(predictions=["Yes"], references=[humans])
        assert result["per_question"][0] == pytest.approx(expected, abs=1e-15)
        assert result["per_question"][0] == _leave_one_out_by_hand("yes", humans)


def test_vqav2_all_agree_leaves_answer_unprocessed(vqav2):
    metric, _ = vqav2
    # All ten humans agree, so vqaEval.py processes neither side. With LLaVA's EvalAI step the answer "Yes." becomes
    # "yes" and matches; the raw upload "Yes" (evalai_preprocess=False) stays "Yes" and matches nothing.
    assert metric.compute(predictions=["Yes."], references=[["yes"] * 10])["accuracy"] == 1.0
    assert metric.compute(predictions=["Yes"], references=[["yes"] * 10], evalai_preprocess=False)["accuracy"] == 0.0
    # Human answers that all agree are not normalised either: "dog." never equals the processed answer "dog".
    assert metric.compute(predictions=["dog"], references=[["dog."] * 10])["accuracy"] == 0.0
    # One disagreeing human switches processing on for everybody: the nine "dog." become "dog" -> 9 matches -> 1.0.
    assert metric.compute(predictions=["dog"], references=[["dog."] * 9 + ["cat"]])["accuracy"] == 1.0


def _vqaeval_pre_2021(answer, humans):
    """The pre-2021 vqaEval.py rule (the former vqa_accuracy module), written out for the comparison below: the
    answer is always processed; human answers only punctuation-processed, and only when they disagree."""
    from re import compile as re_compile

    punct = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
    period, comma = re_compile(r"(?!<=\d)(\.)(?!\d)"), re_compile(r"(\d)(\,)(\d)")

    def punctuation(text):
        out = text
        for p in punct:
            out = out.replace(p, "" if (p + " " in text or " " + p in text or comma.search(text)) else " ")
        return period.sub("", out, 32)

    numbers = {"two": "2", "three": "3"}
    processed = " ".join(numbers.get(w, w) for w in punctuation(answer.strip()).lower().split() if w not in "a an the")
    if len(set(humans)) > 1:
        humans = [punctuation(h) for h in humans]
    return _leave_one_out_by_hand(processed, humans)


def test_vqav2_disagreeing_human_answers_are_normalised_unlike_the_pre_2021_rule(vqav2):
    metric, _ = vqav2
    # Five humans typed "Two", five "three": they disagree, so the 2021 script digit/article-processes them to "2" and
    # "3"; the answer "2" then matches 5 humans -> 1.0. The pre-2021 script left "Two" as is -> 0 matches -> 0.0.
    humans = ["Two"] * 5 + ["three"] * 5
    assert metric.compute(predictions=["2"], references=[humans])["accuracy"] == 1.0
    assert _vqaeval_pre_2021("2", humans) == 0.0
    # The two rules agree where no human answer needs normalising: "2" among "2" x 2 + "3" x 8 -> 0.6 both ways.
    assert metric.compute(predictions=["two"], references=[["2"] * 2 + ["3"] * 8])["accuracy"] == pytest.approx(0.6)
    assert _vqaeval_pre_2021("two", ["2"] * 2 + ["3"] * 8) == pytest.approx(0.6)


def test_vqav2_corpus_accuracy_is_the_mean_and_bad_inputs_are_named(vqav2):
    metric, _ = vqav2
    references = [["2"] * 2 + ["3"] * 8, ["red"] * 10, ["isn't"] * 3 + ["is"] * 7]
    result = metric.compute(predictions=["two", "blue", "Isnt"], references=references)
    # 0.6 (two of ten said "2"), 0.0, and "isnt" -> "isn't" matching 3 humans -> 0.9.
    assert result["per_question"] == pytest.approx([0.6, 0.0, 0.9])
    assert result["accuracy"] == pytest.approx((0.6 + 0.0 + 0.9) / 3)
    with pytest.raises(ValueError, match=r"references\[0\] is empty"):
        metric.compute(predictions=["yes"], references=[[]])


# ---------------------------------------------------------------------------------------------------------------
# VizWiz: processed answer against the raw human answers


def test_vizwiz_compares_with_raw_human_answers(vizwiz):
    metric, _ = vizwiz
    # The answer is processed to "unanswerable"; the three humans who typed "Unanswerable" are not lowercased, so only
    # 7 of 10 match -> every leave-one-out subset keeps >= 6 -> 1.0 anyway.
    assert (
        metric.compute(predictions=["Unanswerable."], references=[["unanswerable"] * 7 + ["Unanswerable"] * 3])[
            "accuracy"
        ]
        == 1.0
    )
    # Two humans typed "yes", eight "Yes" (raw): the answer "Yes" is processed to "yes" and matches 2 -> 0.6. A scorer
    # that also normalised the ground truth would give 1.0.
    result = metric.compute(predictions=["Yes"], references=[["yes"] * 2 + ["Yes"] * 8])
    assert result["per_question"] == [pytest.approx(0.6)]
    # Trailing spaces in a human answer are kept: "white " never matches "white".
    assert metric.compute(predictions=["white"], references=[["white "] * 10])["accuracy"] == 0.0


def test_vizwiz_contractions_use_its_own_apostrophes(vizwiz):
    metric, module = vizwiz
    # Without LLaVA's EvalAI step, "dont" is mapped by VizWiz's table to "don\u2019t" (U+2019), not "don't".
    assert module.vizwiz_digit_article("dont know") == "don\u2019t know"
    assert (
        metric.compute(predictions=["dont know"], references=[["don\u2019t know"] * 10], evalai_preprocess=False)[
            "accuracy"
        ]
        == 1.0
    )
    # With it (the default), EvalAIAnswerProcessor first writes "don't" (ASCII), which VizWiz's table leaves alone.
    assert metric.compute(predictions=["dont know"], references=[["don't know"] * 10])["accuracy"] == 1.0
    # "weve" is one of the entries VizWiz keeps with an ASCII apostrophe.
    assert module.VIZWIZ_CONTRACTIONS["weve"] == "we've" and module.VIZWIZ_CONTRACTIONS["dont"] == "don\u2019t"


# ---------------------------------------------------------------------------------------------------------------
# TextVQA: m4c_evaluator's TextVQAAccuracyEvaluator


def test_textvqa_normalises_both_sides_and_scores_unique_answers(textvqa):
    metric, module = textvqa
    # Both sides go through EvalAIAnswerProcessor: "Coca-Cola" -> "coca cola" ("-" touching no space becomes a space);
    # the two humans "coca cola" match -> 0.6. "Pepsi" matches 8 humans -> 1.0. "sprite" matches none -> 0.0.
    humans = ["coca cola"] * 2 + ["PEPSI"] * 8
    result = metric.compute(predictions=["Coca-Cola", "Pepsi", "sprite"], references=[humans] * 3)
    assert result["per_question"] == pytest.approx([0.6, 1.0, 0.0])
    assert result["accuracy"] == pytest.approx(1.6 / 3)
    assert module.unique_answer_scores(humans) == {"coca cola": pytest.approx(0.6), "pepsi": 1.0}


def test_textvqa_requires_ten_human_answers(textvqa):
    metric, _ = textvqa
    with pytest.raises(ValueError, match=r"references\[0\] has 9 answers"):
        metric.compute(predictions=["a"], references=[["a"] * 9])


@pytest.mark.skipif(not LLAVA_MIRROR.is_dir(), reason="LLaVA's source mirror is not on this machine")
def test_textvqa_and_evalai_processor_agree_with_llavas_own_code_in_a_subprocess(textvqa, tmp_path):
    """Extra cross-check: LLaVA's m4c_evaluator.py (run from the mirror, never copied) on the same answers."""
    pytest.importorskip("tqdm")
    metric, module = textvqa
    source = subprocess.run(
        ["git", "-C", str(LLAVA_MIRROR), "show", "HEAD:llava/eval/m4c_evaluator.py"],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    if source.returncode != 0:
        pytest.skip("m4c_evaluator.py not readable from the mirror")
    (tmp_path / "m4c_evaluator.py").write_text(source.stdout)
    strings = ["Two dogs.", "The man's hat, red?", "100,978", "black/white", "yes / no", "3.5", "isnt", "dont",
               "Coca-Cola!", "it's 5 p.m.", "a (red) car", "U.S.A.", "one, two", "no; maybe", "e-mail", ""]  # fmt: skip
    humans = [["coca cola"] * 2 + ["pepsi"] * 8, ["2 dogs"] * 3 + ["two dogs"] * 7, ["black white"] * 10]
    script = textwrap.dedent(
        """
        import json, sys
        from m4c_evaluator import EvalAIAnswerProcessor, TextVQAAccuracyEvaluator
        strings, humans = json.loads(sys.stdin.read())
        processor = EvalAIAnswerProcessor()
        evaluator = TextVQAAccuracyEvaluator()
        pairs = [{"pred_answer": s, "gt_answers": h} for s in strings for h in humans]
        scores = [evaluator.eval_pred_list([pair]) for pair in pairs]
        print(json.dumps([[processor(s) for s in strings], scores]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, input=json.dumps([strings, humans]), capture_output=True, text=True,
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    official_processed, official_scores = json.loads(done.stdout.strip().splitlines()[-1])
    assert [module.evalai_answer_processor(s) for s in strings] == official_processed
    ours = metric.compute(predictions=[s for s in strings for _ in humans], references=humans * len(strings))
    assert ours["per_question"] == official_scores


# ---------------------------------------------------------------------------------------------------------------
# GQA: convert_gqa_for_eval.py then exact match


def test_gqa_conversion_and_exact_match(gqa):
    metric, _ = gqa
    predictions = ["Yes.", "The left", "Left...", " bowl", "RED", "yes. "]
    references = ["yes", "left", "left", "bowl", "red", "yes"]
    # rstrip('.').lower(): "yes" ok; "the left" keeps its article; "left" ok; " bowl" keeps its space; "red" ok;
    # "yes. " ends with a space, so rstrip('.') removes nothing.
    result = metric.compute(predictions=predictions, references=references)
    assert result["per_question"] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert result["accuracy"] == pytest.approx(3 / 6)
    # The gold answer is not normalised: a gold "Yes" is never matched (predictions are lowercased).
    assert metric.compute(predictions=["Yes"], references=["Yes"])["accuracy"] == 0.0


# ---------------------------------------------------------------------------------------------------------------
# POPE: eval_pope.py parsing and numbers, per split


@pytest.mark.parametrize(
    "answer, parsed",
    [
        ("Yes, there is a dog in the image.", "yes"),
        ("No, there is no cat in the image.", "no"),  # "No" after the comma is deleted -> word "No"
        ("No.", "no"),
        ("There is not a cat.", "no"),
        ("Yes. No other animal is visible.", "yes"),  # only the text before the first "." counts
        ("no", "no"),
        ("NO", "yes"),  # the words must be exactly "No", "no" or "not"
        ("Nope", "yes"),
        ("No,there is none", "yes"),  # "," deleted -> "Nothere": no such word
        ("", "yes"),
    ],
)
def test_pope_parsing_follows_eval_pope(pope, answer, parsed):
    _, module = pope
    assert module.parse_yes_no(answer) == parsed


def test_pope_scores_each_split_and_averages_f1(pope):
    metric, _ = pope
    # random: labels yes x5 read yes, yes, yes, no, no -> TP 3 FN 2; labels no x5 read yes, no x4 -> FP 1 TN 4.
    #   accuracy 7/10, precision 3/4, recall 3/5, F1 = 2 (3/4)(3/5) / (3/4 + 3/5) = 0.9 / 1.35 = 2/3, yes-ratio 4/10.
    random_answers = ["Yes.", "Yes, it is.", "yes", "No.", "No, there is not."]
    random_answers += ["Yes.", "No.", "no", "There is no car.", "No"]
    random_labels = ["yes"] * 5 + ["no"] * 5
    # popular: TP 1, FP 1 -> precision 1/2, recall 1/1, F1 = 2 (1/2)(1) / (3/2) = 2/3; accuracy 1/2; yes-ratio 1.
    popular_answers, popular_labels = ["Yes", "Yes"], ["yes", "no"]
    result = metric.compute(
        predictions=random_answers + popular_answers,
        references=random_labels + popular_labels,
        splits=["random"] * 10 + ["popular"] * 2,
    )
    assert result["counts"] == {
        "random": {"tp": 3, "fp": 1, "tn": 4, "fn": 2},
        "popular": {"tp": 1, "fp": 1, "tn": 0, "fn": 0},
    }
    expected = {
        "accuracy_random": 0.7, "precision_random": 0.75, "recall_random": 0.6, "f1_random": 2 / 3,
        "yes_ratio_random": 0.4, "accuracy_popular": 0.5, "precision_popular": 0.5, "recall_popular": 1.0,
        "f1_popular": 2 / 3, "yes_ratio_popular": 1.0,
    }  # fmt: skip
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-15), key
    assert result["f1"] == pytest.approx(2 / 3, abs=1e-15)  # mean of the two split F1s
    assert result["per_question"] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert result["notes"] == []


def test_pope_split_without_a_yes_answer_gets_defined_zeros(pope):
    metric, _ = pope
    # adversarial: every answer reads "no": TP = FP = 0, so eval_pope.py's TP / (TP + FP) raises ZeroDivisionError.
    # Defined here: precision 0.0; recall = 0 / 1 = 0.0; F1 (P + R = 0) 0.0; accuracy 1/2 (the "no" label is right).
    result = metric.compute(
        predictions=["No", "no", "Yes"], references=["yes", "no", "yes"], splits=["adversarial"] * 2 + ["random"]
    )
    assert (result["precision_adversarial"], result["recall_adversarial"], result["f1_adversarial"]) == (0.0, 0.0, 0.0)
    assert result["accuracy_adversarial"] == 0.5 and result["yes_ratio_adversarial"] == 0.0
    assert result["f1_random"] == 1.0 and result["f1"] == 0.5
    assert len(result["notes"]) == 2 and all(note.startswith("adversarial:") for note in result["notes"])
    assert all(not math.isnan(value) for value in result.values() if isinstance(value, float))
    with pytest.raises(ValueError, match=r"references\[1\]"):
        metric.compute(predictions=["yes", "yes"], references=["yes", "Yes"])
    with pytest.raises(ValueError, match="splits has 1 entries"):
        metric.compute(predictions=["yes", "yes"], references=["yes", "no"], splits=["random"])


@pytest.mark.skipif(not LLAVA_MIRROR.is_dir(), reason="LLaVA's source mirror is not on this machine")
def test_pope_agrees_with_llavas_eval_pope_in_a_subprocess(pope, tmp_path):
    """Extra cross-check: LLaVA's eval_pope.py (from the mirror, never copied) on a synthetic POPE layout."""
    metric, _ = pope
    script = _mirror_file(LLAVA_MIRROR, "llava/eval/eval_pope.py", tmp_path)
    answers = ["Yes.", "No, not at all.", "There is a cat", "Yes", "NO", "Yes, there is.", "I do not think so", "No"]
    labels = ["yes", "no", "no", "yes", "no", "yes", "no", "yes"]
    splits = ["adversarial", "adversarial", "adversarial", "popular", "popular", "random", "random", "random"]
    (tmp_path / "coco").mkdir()
    for split in ("adversarial", "popular", "random"):
        rows = [label for label, name in zip(labels, splits) if name == split]
        _write_jsonl(tmp_path / "coco" / f"coco_pope_{split}.json", [{"label": label} for label in rows])
    _write_jsonl(tmp_path / "questions.jsonl", [{"question_id": i, "category": s} for i, s in enumerate(splits)])
    _write_jsonl(tmp_path / "answers.jsonl", [{"question_id": i, "text": a} for i, a in enumerate(answers)])
    done = subprocess.run(
        [sys.executable, str(script), "--annotation-dir", str(tmp_path / "coco"), "--question-file",
         str(tmp_path / "questions.jsonl"), "--result-file", str(tmp_path / "answers.jsonl")],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(done.stderr[-2000:])
    official = {}
    for block in done.stdout.split("Category: ")[1:]:
        split = block.split(",")[0]
        last = [line for line in block.splitlines() if line.count(",") == 4][-1]
        official[split] = [float(x) for x in last.split(",")]  # f1, acc, precision, recall, yes_ratio (%.3f)
    ours = metric.compute(predictions=answers, references=labels, splits=splits)
    assert set(official) == {"adversarial", "popular", "random"}
    for split, (f1, acc, precision, recall, yes_ratio) in official.items():
        assert round(ours[f"f1_{split}"], 3) == f1 and round(ours[f"accuracy_{split}"], 3) == acc
        assert round(ours[f"precision_{split}"], 3) == precision and round(ours[f"recall_{split}"], 3) == recall
        assert round(ours[f"yes_ratio_{split}"], 3) == yes_ratio


# ---------------------------------------------------------------------------------------------------------------
# ScienceQA: eval_science_qa.py letter parsing and FAILED


@pytest.mark.parametrize(
    "answer, parsed",
    [
        ("C", "C"),  # one of A-E
        ("A. a cat", "A"),  # a letter followed by ". "
        ("The answer is C.", "C"),  # the pattern, once
        ("The answer is CD", "C"),  # the pattern's final "." is any character
        ("C)", "FAILED"),  # not a bare letter; no ". " after it
        ("C.", "FAILED"),  # only 2 characters: the ". " rule needs 3
        ("The answer is A", "FAILED"),  # nothing after the letter for the pattern's "."
        ("the answer is B.", "FAILED"),  # the pattern is case-sensitive
        ("cat", "FAILED"),  # an option's text is not read
        ("I cannot tell.", "FAILED"),  # no rule matches (the old parser read the "a" of "cannot")
        ("The answer is A. The answer is B.", "FAILED"),  # two statements
        ("The answer is F.", "F"),  # read, but past the options: scores 0
        ("FAILED", "FAILED"),
    ],
)
def test_scienceqa_parsing_follows_eval_science_qa(scienceqa, answer, parsed):
    _, module = scienceqa
    assert module.parse_answer(answer) == parsed


def test_scienceqa_accuracy_img_accuracy_and_failed(scienceqa):
    metric, _ = scienceqa
    choices = [["cat", "dog", "bird"]] * 6 + [["yes", "no"]]
    predictions = ["C", "C)", "The answer is C.", "the answer is C.", "bird", "I cannot tell.", "C"]
    references = [2, 2, 2, 2, 2, 2, 1]
    has_image = [True, True, False, False, True, True, False]
    result = metric.compute(predictions=predictions, references=references, choices=choices, has_image=has_image)
    # Right: "C" (C = index 2) and "The answer is C."; the rest FAILED; the last "C" is past a 2-option question.
    assert result["per_question"] == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert result["parsed"] == ["C", "FAILED", "C", "FAILED", "FAILED", "FAILED", "C"]
    assert result["accuracy"] == pytest.approx(2 / 7)
    assert result["img_accuracy"] == pytest.approx(1 / 4)  # image rows 0, 1, 4, 5: only row 0 right
    no_image = metric.compute(predictions=["A"], references=[0], choices=[["x", "y"]], has_image=[False])
    assert no_image["img_accuracy"] == 0.0 and no_image["notes"]
    with pytest.raises(ValueError, match="choices"):
        metric.compute(predictions=["A"], references=[0], has_image=[True])
    with pytest.raises(ValueError, match=r"references\[0\] is 3"):
        metric.compute(predictions=["A"], references=[3], choices=[["x", "y"]], has_image=[True])


@pytest.mark.skipif(not LLAVA_MIRROR.is_dir(), reason="LLaVA's source mirror is not on this machine")
def test_scienceqa_agrees_with_llavas_eval_science_qa_in_a_subprocess(scienceqa, tmp_path):
    """Extra cross-check: LLaVA's eval_science_qa.py (from the mirror, never copied) on synthetic problems."""
    metric, _ = scienceqa
    script = _mirror_file(LLAVA_MIRROR, "llava/eval/eval_science_qa.py", tmp_path)
    texts = ["A", "B", "C)", "C.", "The answer is A", "the answer is B.", "cat", "I cannot tell.", "A. a cat",
             "The answer is B.", "The answer is BC", "E", "D", "The answer is A. The answer is B.", "B. dog", "  A"]  # fmt: skip
    choices = [["cat", "dog", "bird"] if i % 2 else ["cat", "dog", "bird", "fish"] for i in range(len(texts))]
    answers = [i % 3 for i in range(len(texts))]
    images = [i % 4 != 3 for i in range(len(texts))]
    ids = [str(100 + i) for i in range(len(texts))]
    problems = {pid: {"choices": c, "answer": a} for pid, c, a in zip(ids, choices, answers)}
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ids}))
    rows = [
        {"question_id": pid, "text": t, "prompt": ("<image>\n" if im else "") + "Q"}
        for pid, t, im in zip(ids, texts, images)
    ]
    _write_jsonl(tmp_path / "answers.jsonl", rows)
    done = subprocess.run(
        [sys.executable, str(script), "--base-dir", str(tmp_path), "--result-file", str(tmp_path / "answers.jsonl"),
         "--output-file", str(tmp_path / "out.json"), "--output-result", str(tmp_path / "result.json")],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    official = json.loads((tmp_path / "result.json").read_text())
    ours = metric.compute(predictions=texts, references=answers, choices=choices, has_image=images)
    assert ours["per_question"] == [1.0 if official["results"][pid] == a else 0.0 for pid, a in zip(ids, answers)]
    assert 100 * ours["accuracy"] == official["acc"]
    assert f"IMG-Accuracy: {100 * ours['img_accuracy']:.2f}%" in done.stdout


# ---------------------------------------------------------------------------------------------------------------
# MMBench: VLMEvalKit's can_infer and circular evaluation

ANIMALS = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


@pytest.mark.parametrize(
    "answer, letter",
    [
        ("The correct answer is A.", "A"),  # one option letter, among the last four words
        ("A", "A"),
        ("B. dog", "B"),
        ("(C) bird", "C"),  # "(" and ")" are separators
        ("A cat is sitting on the left side of the dog", None),  # the lone "A" is word 1 of 11: too early; too long
        ("A or B", None),  # two letters
        ("fish", "D"),  # no letter: the one option text found in the answer
        ("It is a cat or a dog", None),  # two option texts
        ("The answer is b", "B"),  # the case-insensitive "answer is X" pattern (VLMEvalKit 2026)
        ("The correct answer is **B**. Here's why: dogs bark.", "B"),  # "B" is word 5 of 9, the pattern reads it
        ("Cannot determine the answer", "Z"),  # a refusal phrase
        ("Z", "Z"),
        ("Failed to obtain answer via API", None),
    ],
)
def test_mmbench_can_infer(mmbench, answer, letter):
    _, module = mmbench
    assert module.can_infer(answer, dict(ANIMALS)) == letter


def test_mmbench_verbose_pattern_can_be_switched_off(mmbench):
    _, module = mmbench
    # Before 2026-06 VLMEvalKit had no "answer is X" pattern: these two answers were unreadable.
    assert module.can_infer("The answer is b", dict(ANIMALS), match_verbose_answer=False) is None
    assert module.can_infer("The correct answer is **B**. Here's why: dogs bark.", dict(ANIMALS), False) is None


def test_mmbench_circular_accuracy_needs_every_rotation(mmbench):
    metric, _ = mmbench
    # Question 1: four rotations, all answered right. Question 2: three right, one wrong ("A" where "B" is right).
    texts = list(ANIMALS.values())
    options = [{letter: texts[(i + k) % 4] for k, letter in enumerate("ABCD")} for i in range(4)]
    cat_letter = ["ABCD"[(0 - i) % 4] for i in range(4)]  # where "cat" sits after rotating by i
    predictions = cat_letter + cat_letter[:3] + ["A"]
    references = cat_letter + cat_letter[:3] + [cat_letter[3]]
    result = metric.compute(
        predictions=predictions, references=references, options=options * 2, groups=[1] * 4 + ["q2"] * 4
    )
    assert cat_letter[3] != "A"
    assert result["per_question"] == [1.0] * 7 + [0.0]
    assert result["accuracy"] == pytest.approx(7 / 8)
    assert result["circular_per_question"] == {1: 1.0, "q2": 0.0}
    assert result["circular_accuracy"] == 0.5
    with pytest.raises(ValueError, match=r"references\[0\] is 'E'"):
        metric.compute(predictions=["A"], references=["E"], options=[{"A": "x", "B": "y"}])
    with pytest.raises(ValueError, match="options must give"):
        metric.compute(predictions=["A"], references=["A"])


VLMEVALKIT_MIRROR = Path("/work/.mirror/open-compass+VLMEvalKit/repo")


@pytest.mark.skipif(not VLMEVALKIT_MIRROR.is_dir(), reason="VLMEvalKit's source mirror is not on this machine")
def test_mmbench_matcher_agrees_with_vlmevalkit_in_a_subprocess(mmbench, tmp_path):
    """Extra cross-check: VLMEvalKit's matching_util.py (from the mirror, never copied; its logger stubbed)."""
    _, module = mmbench
    package = tmp_path / "vlmeval"
    (package / "smp").mkdir(parents=True)
    (package / "utils").mkdir()
    for init in (package / "__init__.py", package / "smp" / "__init__.py", package / "utils" / "__init__.py"):
        init.write_text("")
    (package / "smp" / "log.py").write_text("import logging\nget_logger = logging.getLogger\n")
    _mirror_file(VLMEVALKIT_MIRROR, "vlmeval/utils/matching_util.py", package / "utils")
    answers = ["The correct answer is A.", "A", "B. dog", "(C) bird", "A cat is sitting on the left side of the dog",
               "A or B", "fish", "It is a cat or a dog", "The answer is b", "answer is **C**", "Z", "D) fish, surely",
               "I think the answer is C because birds fly", "Cannot determine the answer", "the dog", "", "B C",
               "The image shows a dog. B", "Option D: fish.", "The correct answer is **B**. Here's why: dogs bark."]  # fmt: skip
    script = "import json, sys\nfrom vlmeval.utils.matching_util import can_infer\n"
    script += "answers, options = json.loads(sys.stdin.read())\n"
    script += "print(json.dumps([can_infer(a, dict(options)) or None for a in answers]))\n"
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, input=json.dumps([answers, ANIMALS]), capture_output=True,
        text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    official = json.loads(done.stdout.strip().splitlines()[-1])
    assert [module.can_infer(a, dict(ANIMALS)) for a in answers] == official


# ---------------------------------------------------------------------------------------------------------------
# Exact match (the synthetic shapes benchmark)


def test_exact_match_normalizations(exact_match):
    metric, _ = exact_match
    predictions = ["Yes.", "the left", "Left...", " bowl ", "A red cube."]
    references = ["yes", "left", "left", "bowl", "red cube"]
    # gqa-style (rstrip('.').lower() after strip): 1, 0 (article kept), 1, 1, 0
    gqa = metric.compute(predictions=predictions, references=references)
    assert gqa["per_question"] == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert gqa["exact_match"] == pytest.approx(3 / 5)
    assert metric.compute(predictions=predictions, references=references, return_per_sample=True)["per_sample"] == [
        1.0, 0.0, 1.0, 1.0, 0.0,
    ]  # fmt: skip
    lenient = metric.compute(predictions=predictions, references=references, normalization="lenient")
    assert lenient["exact_match"] == 1.0
    none = metric.compute(predictions=predictions, references=references, normalization="none")
    assert none["exact_match"] == 0.0
    with pytest.raises(ValueError, match="normalization"):
        metric.compute(predictions=["a"], references=["a"], normalization="squad")


def _mirror_file(mirror: Path, path: str, folder: Path) -> Path:
    """Writes `path` of a source mirror's HEAD into `folder` (test-time only) and returns it; skips if unreadable."""
    shown = subprocess.run(
        ["git", "-C", str(mirror), "show", f"HEAD:{path}"], check=False, capture_output=True, text=True
    )
    if shown.returncode != 0:
        pytest.skip(f"{path} is not readable from {mirror}")
    target = folder / Path(path).name
    target.write_text(shown.stdout)
    return target


def _write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


# ---------------------------------------------------------------------------------------------------------------
# CIDEr-D: pycocoevalcap's PTBTokenizer rules in Python, then CiderScorer


@pytest.mark.parametrize(
    "captions, tokenized",
    [
        # Parentheses become -LRB-/-RRB- and are lowercased *after* tokenising, so pycocoevalcap's PUNCTUATIONS
        # ("-LRB-" upper case) do not remove them. "cannot" and "gonna" are split (splitAssimilations); "U.S.A." and
        # "p.m." are acronyms; "#1", "$5" and "50%" split off their sign; "&" is kept; "co." at the very end is an
        # abbreviation whose period is also returned again (then dropped as punctuation).
        (["A man (in a hat) cannot see the U.S.A. at 5 p.m. gonna #1 $5 50% & co."],
         ["a man -lrb- in a hat -rrb- can not see the u.s.a. at 5 p.m. gon na # 1 $ 5 50 % & co."]),
        # Clitics split ("dog 's", "is n't"); LaTeX quotes, "--", "...", ";" and "!" are dropped; brackets and
        # braces become -lsb- / -rsb- / -lcb- / -rcb- and stay.
        (["The dog's ball isn't red; it's \"blue\" -- or [green]... {maybe}!"],
         ["the dog 's ball is n't red it 's blue or -lsb- green -rsb- -lcb- maybe -rcb-"]),
        # Titles and month abbreviations keep their period; "3:30" and "5," (comma dropped) as numbers.
        (["Mr. Smith met Dr. Who at 3:30 p.m. on Jan. 5, 2020."], ["mr. smith met dr. who at 3:30 p.m. on jan. 5 2020"]),
        # Hyphenated words and fractions are one token; "$3.50" -> "$ 3.50".
        (["black-and-white photo, 1/2 price: $3.50 (50% off) & more"],
         ["black-and-white photo 1/2 price $ 3.50 -lrb- 50 % off -rrb- & more"]),
        (["I can't go; you'd better wanna go."], ["i ca n't go you 'd better wan na go"]),
        # URLs and e-mail addresses stay whole; ":)" at the very end is ":" (dropped) and ")" (no smiley: the rule
        # needs a character after it).
        (["see www.example.com or mail a@b.com :)"], ["see www.example.com or mail a@b.com -rrb-"]),
        # Curly quotes become LaTeX quotes and are dropped; the em and en dashes become "--"; "…" is "...".
        (["It\u2019s \u201cquoted\u201d \u2014 with dashes \u2013 and\u2026"], ["it 's quoted with dashes and"]),
        # A single letter + "." is one token ("a."), unless the next caption (same stream) starts with a word such
        # as "The": then the acronym rule returns "A" and the period separately.
        (["the letter A."], ["the letter a."]),
        (["the letter A.", "The end"], ["the letter a", "the end"]),
    ],
)  # fmt: skip
def test_cider_ptb_tokenization_by_hand(cider, captions, tokenized):
    # Every case was also checked against pycocoevalcap 1.2's Java PTBTokenizer (stanford-corenlp-3.4.1.jar).
    _, module = cider
    assert module.ptb_tokenize(captions) == tokenized


def test_cider_tokenizer_shortcuts_change_nothing_on_random_text(cider):
    _, module = cider
    rng = np.random.default_rng(0)
    pieces = ["a", "A", "cat", "Dr", "co", "Inc", "cannot", "gonna", "U.S", "p.m", "http", "www", "x", "b", "3", "42",
              "5km", " ", " ", "  ", "\n", ".", ",", ";", ":", "!", "?", "(", ")", '"', "'", "-", "@", "/", "$", "%",
              "&", "#", "'s", "n't", "\u2019", "\u00a0", "\t", "...", ":)", "1/2", "e-mail", "com", "x_x"]  # fmt: skip
    for _ in range(300):
        text = "".join(rng.choice(pieces, size=rng.integers(1, 25)))
        assert module.ptb_lex(text) == module.ptb_lex(text, shortcuts=False), repr(text)


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
    # Image 1, candidate "red red" (PTB: "Red red." -> "red red") vs reference "red cube" (1 bigram each):
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
    result = metric.compute(predictions=["Red red.", "The blue ball"], references=[["red cube"], ["blue ball"]])
    assert result["per_question"] == pytest.approx([score_1, score_2], abs=1e-12)
    assert result["cider"] == pytest.approx((score_1 + score_2) / 2, abs=1e-12)


def test_cider_matches_independent_float64_reference(cider):
    metric, module = cider
    predictions = [
        "A man riding a red bike down the street.",
        "Two dogs play with a ball on the grass!",
        "a plate of food (with broccoli)",
        "a cat",
    ]
    references = [
        ["A man rides a bike on a street.", "A person riding a red bicycle down a road", "man on a bike"],
        ["two dogs playing with a ball in the grass", "Dogs play on a lawn with a ball."],
        ["a plate with broccoli and rice", "food on a white plate", "a plate of food", "broccoli on a plate"],
        ["a cat sleeping on a couch", "A black cat lying on a sofa."],
    ]
    result = metric.compute(predictions=predictions, references=references)
    flat = module.ptb_tokenize([ref for refs in references for ref in refs])
    sizes = np.cumsum([0] + [len(refs) for refs in references])
    expected = _cider_d_reference(
        [caption.split() for caption in module.ptb_tokenize(predictions)],
        [[caption.split() for caption in flat[start:end]] for start, end in itertools.pairwise(sizes)],
    )
    np.testing.assert_allclose(result["per_question"], expected, rtol=1e-12, atol=1e-12)
    assert result["cider"] == pytest.approx(expected.mean(), abs=1e-12)
    assert 0 < result["cider"] < 10


def test_cider_identical_disjoint_single_image_and_pretokenized(cider):
    metric, _ = cider
    captions = ["a red cube on a wooden table", "two blue balls next to a green cone", "an empty white room at night"]
    identical = metric.compute(predictions=captions, references=[[c] for c in captions])
    assert identical["per_question"] == pytest.approx([10.0, 10.0, 10.0], abs=1e-12)
    disjoint = metric.compute(
        predictions=["purple zebra dancing", "seven loud trumpets", "frozen lake"], references=[[c] for c in captions]
    )
    assert disjoint["cider"] == 0.0
    # A single image: log N = 0 makes every idf weight 0, as in pycocoevalcap.
    assert metric.compute(predictions=[captions[0]], references=[[captions[0]]])["cider"] == 0.0
    # tokenize=False splits on whitespace only: "cube." and "cube" differ, so the first image loses its 4-grams.
    raw = metric.compute(
        predictions=["a red cube."] + captions[1:],
        references=[["a red cube"]] + [[c] for c in captions[1:]],
        tokenize=False,
    )
    assert raw["per_question"][0] < 10.0
    with pytest.raises(ValueError, match=r"references\[0\]"):
        metric.compute(predictions=["a cat"], references=[[]])
