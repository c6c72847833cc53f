"""recipes.eval end to end on a synthetic evaluation root in every format (recipes/eval/synthetic_root.py).

1. The tiny random model answers every benchmark and `score` scores every answers file (the machinery: its answers
   are gibberish).
2. Hand-written answers in LLaVA's format score the values worked out by hand below from the official scripts'
   rules (each case says why it scores what it scores).
3. `submit` writes the evaluation servers' upload files in their shapes; `run` prints the table.
4. Resume after a kill, a torn last line, batched == one at a time, skipped images counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("evaluate")

from recipes.eval.answering import answer_benchmark
from recipes.eval.common import get_benchmark, score_answers

REPO_ROOT = Path(__file__).resolve().parents[1]
LLAVA_KEYS = ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]
MMBENCH_KEYS = ["question_id", "round_id", "prompt", "text", "options", "option_char", "answer_id", "model_id",
                "metadata"]  # fmt: skip
# (benchmark, split) pairs scored locally, and the metric keys issue 10 fixes for each.
LOCAL = {
    # The official scorers' breakdowns: vqaEval.py's and VizWiz's perAnswerType, GQA eval.py's binary / open.
    ("vqav2", "val"): {"accuracy", "accuracy_other", "accuracy_number"},
    ("gqa", None): {"accuracy", "accuracy_binary", "accuracy_open"},
    ("vizwiz", "val"): {"accuracy", "accuracy_other", "accuracy_unanswerable"},
    ("textvqa", None): {"accuracy"},
    ("scienceqa", None): {"accuracy", "img_accuracy"},
    ("pope", None): {
        f"{m}_{s}"
        for m in ("accuracy", "precision", "recall", "f1", "yes_ratio")
        for s in ("adversarial", "popular", "random")
    }
    | {"f1"},
    ("mmbench", None): {"circular_accuracy", "accuracy"},
    ("mmbench_cn", None): {"circular_accuracy", "accuracy"},
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from recipes.eval.synthetic_root import build_synthetic_eval_root

    return build_synthetic_eval_root(str(tmp_path_factory.mktemp("eval-root")))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer, tiny_processor):
    from recipes.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("tiny-sqllava")
    build_tiny_model(tiny_tokenizer).save_pretrained(path)
    tiny_processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def loaded(model_dir):
    from recipes.loading import load_model_and_processor

    return load_model_and_processor(model_dir, device="cpu")


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def answer(loaded, name, root, path, **kwargs):
    model, processor = loaded
    kwargs = {"batch_size": 4, "max_new_tokens": 4, "model_id": "tiny", "progress": False, **kwargs}
    return answer_benchmark(model, processor, name, root, str(path), **kwargs)


def test_tiny_model_answers_and_scores_every_benchmark(loaded, root, tmp_path):
    for (name, split), keys in LOCAL.items():
        path = tmp_path / f"{name}.jsonl"
        report = answer(loaded, name, root, path, split=split)
        rows = read_jsonl(path)
        assert report.num_generated == report.num_questions == len(rows) > 0 and report.skipped == {}
        expected_keys = MMBENCH_KEYS if name.startswith("mmbench") else LLAVA_KEYS
        assert all(list(row) == expected_keys and isinstance(row["text"], str) for row in rows)
        assert {row["model_id"] for row in rows} == {"tiny"}
        result = score_answers(get_benchmark(name), root, str(path), split=split)
        assert set(result["metrics"]) == keys
        assert all(0.0 <= v <= 1.0 for v in result["metrics"].values())
        assert result["counts"]["missing"] == 0 and result["counts"]["answered"] == result["counts"]["questions"]
        assert len(result["per_question"]) > 0
    # MMBench asks every rotation: 4 + 3 + 2 options.
    assert len(read_jsonl(tmp_path / "mmbench.jsonl")) == 9
    # Judged benchmarks are answered like the rest; scoring without a judge says what it needs.
    for name in ("llava_bench", "mmvet"):
        answer(loaded, name, root, tmp_path / f"{name}.jsonl")
        with pytest.raises(ValueError, match="--judge-url URL .* --judge-model NAME"):
            score_answers(get_benchmark(name), root, str(tmp_path / f"{name}.jsonl"))


def write_answers(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"answer_id": "x", "model_id": "hand", "metadata": {}, **row}) + "\n" for row in rows)
    return str(path)


def llava_rows(benchmark, root, split, texts, drop=()):
    """Answer rows for the questions of a benchmark, in order, with the given texts (None: no answer)."""
    questions = get_benchmark(benchmark).load_questions(root, get_benchmark(benchmark).resolve_split(split))
    rows = []
    for q, text in zip(questions, texts):
        if text is not None:
            rows.append({**q.row, "text": text})
    return rows


def score(benchmark, root, tmp_path, texts, split=None, **kwargs):
    path = write_answers(tmp_path / f"hand-{benchmark}.jsonl", llava_rows(benchmark, root, split, texts))
    return score_answers(get_benchmark(benchmark), root, path, split=split, **kwargs)


def test_hand_written_answers_score_the_official_values(root, tmp_path):
    # VQAv2 val (EvalAI processing of the answer, then vqaEval's mean over the 10 leave-one-out sets of
    # min(1, matches / 3)):
    #   "Green."  -> "green": 10 humans say green, every subset has 9 matches -> 1.0
    #   "two"     -> "2"; humans 7 x "1" + 3 x "one" ("one" -> "1" as they disagree): no match -> 0.0
    #   "yellow"  -> 3 of 10 match: 3 subsets lose a match (2/3), 7 keep 3 (1)      -> (3 * 2/3 + 7) / 10 = 0.9
    result = score("vqav2", root, tmp_path, ["Green.", "two", "yellow"], split="val")
    # vqaEval.py's perAnswerType: the two "other" questions (1.0, 0.9) and the "number" one (0.0).
    assert result["metrics"] == pytest.approx(
        {"accuracy": (1.0 + 0.0 + 0.9) / 3, "accuracy_other": (1.0 + 0.9) / 2, "accuracy_number": 0.0}
    )
    assert result["per_question"] == {"393225000": 1.0, "393225001": 0.0, "393226000": pytest.approx(0.9)}

    # GQA (convert_gqa_for_eval.py: rstrip(".").lower(), then exact match): "Yes." -> "yes" right, "Blue" right,
    # "No, it is green." -> "no, it is green" wrong. eval.py's binary (structural type verify: questions 1 and 3) and
    # open (query: question 2).
    result = score("gqa", root, tmp_path, ["Yes.", "Blue", "No, it is green."])
    assert result["metrics"] == pytest.approx({"accuracy": 2 / 3, "accuracy_binary": 0.5, "accuracy_open": 1.0})

    # VizWiz val (processed answer against the RAW human answers):
    #   "green" vs 4 x "Green", 2 x "green", 4 x "lime": 2 raw matches -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    #   "Unanswerable" -> "unanswerable", 6 matches -> 1.0
    result = score("vizwiz", root, tmp_path, ["green", "Unanswerable"], split="val")
    assert result["metrics"] == pytest.approx(
        {"accuracy": (0.6 + 1.0) / 2, "accuracy_other": 0.6, "accuracy_unanswerable": 1.0}
    )

    # TextVQA (m4c: both sides processed; per unique answer the mean over 10 leave-one-out of min(1, n / 3)):
    #   "Red." -> "red": 9 x red + "Red." -> all "red" -> 1.0;  "go" -> 0.0;
    #   "Nikon" -> "nikon", 2 of 10 -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6.  Keyed by TextVQA's own question ids.
    result = score("textvqa", root, tmp_path, ["Red.", "go", "Nikon"])
    assert result["metrics"]["accuracy"] == pytest.approx((1.0 + 0.0 + 0.6) / 3)
    assert result["per_question"] == {"34602": 1.0, "34603": 0.0, "34604": pytest.approx(0.6)}
    # eval_textvqa.py reads only the answers: a missing one is left out.
    result = score("textvqa", root, tmp_path, ["Red.", None, "Nikon"])
    assert result["metrics"]["accuracy"] == pytest.approx(0.8)
    assert result["counts"]["missing"] == 1 and result["missing_policy"] == "excluded"

    # POPE (eval_pope.py: first sentence, commas dropped, "no"/"No"/"not" among the words -> no, else yes), per split:
    #   adversarial [yes, no]: "Yes" TP, "No, there is not." TN -> acc 1, P 1, R 1, F1 1, yes ratio 0.5
    #   popular [yes, no]: "Yes." TP, "There is a person." -> yes, FP -> acc 0.5, P 0.5, R 1, F1 2/3, yes ratio 1
    #   random [yes, no, yes]: "no" FN, "no" TN, "Yes, it is." TP -> acc 2/3, P 1, R 0.5, F1 2/3, yes ratio 1/3
    result = score("pope", root, tmp_path,
                   ["Yes", "No, there is not.", "Yes.", "There is a person.", "no", "no", "Yes, it is."])  # fmt: skip
    metrics = result["metrics"]
    expected = {"accuracy_adversarial": 1.0, "f1_adversarial": 1.0, "yes_ratio_adversarial": 0.5,
                "accuracy_popular": 0.5, "precision_popular": 0.5, "recall_popular": 1.0, "f1_popular": 2 / 3,
                "yes_ratio_popular": 1.0, "accuracy_random": 2 / 3, "precision_random": 1.0, "recall_random": 0.5,
                "f1_random": 2 / 3, "yes_ratio_random": 1 / 3, "f1": (1 + 2 / 3 + 2 / 3) / 3}  # fmt: skip
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)

    # ScienceQA (eval_science_qa.py): "A" is an option letter -> A, right (image question); "B." is neither a
    # letter, nor "X. ...", nor "The answer is X." -> FAILED, wrong (text question); "C. blue" -> C, right (image).
    result = score("scienceqa", root, tmp_path, ["A", "B.", "C. blue"])
    assert result["metrics"] == pytest.approx({"accuracy": 2 / 3, "img_accuracy": 1.0})
    # A missing answer is "FAILED": wrong, and counted.
    result = score("scienceqa", root, tmp_path, ["A", "The answer is B.", None])
    assert result["metrics"] == pytest.approx({"accuracy": 2 / 3, "img_accuracy": 0.5})
    assert result["counts"]["missing"] == 1 and result["missing_policy"] == "wrong"

    # MMBench, every rotation (VLMEvalKit's rule-based matcher): row 0 (4 options, answer red) answered D/C/B where
    # red moved -> right every round; row 1 (3 options, answer "square") wrong in round 2 ("B" is "circle" there);
    # row 2 (2 options) right, "B." matching B. Circular: rows 0 and 2 -> 2/3; per row 8 of 9 right.
    texts = ["A", "D", "C", "B", "B", "The correct answer is A.", "B", "A", "B."]
    result = score("mmbench", root, tmp_path, texts)
    assert result["metrics"] == pytest.approx({"circular_accuracy": 2 / 3, "accuracy": 8 / 9})
    assert result["per_question"] == {"0": 1.0, "1": 0.0, "2": 1.0}
    # A missing rotation fails its question.
    result = score("mmbench", root, tmp_path, ["A", "D", "C", None, "B", "A", "C", "A", "B"])
    assert result["metrics"]["circular_accuracy"] == pytest.approx(2 / 3)
    assert result["counts"]["missing"] == 1
    # LLaVA's default (no --all-rounds) writes round 0 only: scored on the TSV rows as they are.
    result = score("mmbench", root, tmp_path, ["A", None, None, None, "B", None, None, "B", None])
    assert result["metrics"] == pytest.approx({"circular_accuracy": 2 / 3, "accuracy": 2 / 3})
    assert result["counts"]["questions"] == 3 and "round 0 only" in result["notes"][0]


def test_submit_writes_the_evaluation_servers_upload_files(root, tmp_path):
    from recipes.eval.__main__ import submission
    from recipes.eval.mmbench import read_xlsx

    # VQAv2 test-dev for EvalAI: every test2015 question, EvalAI-processed answers, "" outside test-dev.
    path = write_answers(tmp_path / "vqav2.jsonl", llava_rows("vqav2", root, None, ["Two!", "Yes.", "3 squares"]))
    submission(get_benchmark("vqav2"), root, None, path, str(tmp_path / "vqav2.json"))
    upload = json.loads((tmp_path / "vqav2.json").read_text())
    assert upload == [{"question_id": 262144000, "answer": "2"}, {"question_id": 262144001, "answer": "yes"},
                      {"question_id": 262145000, "answer": "3 squares"}, {"question_id": 262146000, "answer": ""}]  # fmt: skip

    # VizWiz test: {"image", "answer"} per question, all of them needed (as convert_vizwiz_for_submission.py asserts).
    path = write_answers(tmp_path / "vizwiz.jsonl", llava_rows("vizwiz", root, None, ["Red.", "unanswerable"]))
    submission(get_benchmark("vizwiz"), root, None, path, str(tmp_path / "vizwiz.json"))
    assert json.loads((tmp_path / "vizwiz.json").read_text()) == [
        {"image": "VizWiz_test_00000000.jpg", "answer": "red"}, {"image": "VizWiz_test_00000001.jpg",
                                                                  "answer": "unanswerable"}]  # fmt: skip
    path = write_answers(tmp_path / "vizwiz-part.jsonl", llava_rows("vizwiz", root, None, ["Red.", None]))
    with pytest.raises(ValueError, match="1 VizWiz test question"):
        submission(get_benchmark("vizwiz"), root, None, path, str(tmp_path / "never.json"))

    # MMBench: the TSV without hint/category/source/image/comment/l2-category, `prediction` as 7th column, round 0.
    texts = ["A", "D", "C", "B", "B", "A", "C", "A", "B"]
    path = write_answers(tmp_path / "mmbench.jsonl", llava_rows("mmbench", root, None, texts))
    submission(get_benchmark("mmbench"), root, "dev", path, str(tmp_path / "mmbench.xlsx"))
    assert read_xlsx(str(tmp_path / "mmbench.xlsx")) == [
        ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"],
        [0, "What colour is the square?", "red", "green", "blue", "yellow", "A", "A", "dev"],
        [1, "Which shape is shown?", "circle", "square", "triangle", None, "B", "B", "dev"],
        [2, "Is the background light?", "yes", "no", None, None, "A", "A", "dev"],
    ]

    # GQA's eval.py input (convert_gqa_for_eval.py) and MM-Vet's grader input (convert_mmvet_for_eval.py).
    path = write_answers(tmp_path / "gqa.jsonl", llava_rows("gqa", root, None, ["Yes.", "Blue", None]))
    submission(get_benchmark("gqa"), root, None, path, str(tmp_path / "gqa.json"))
    assert json.loads((tmp_path / "gqa.json").read_text()) == [
        {"questionId": "201307251", "prediction": "yes"},
        {"questionId": "201640614", "prediction": "blue"},
    ]
    path = write_answers(tmp_path / "mmvet.jsonl", llava_rows("mmvet", root, None, ["Red.", "One"]))
    submission(get_benchmark("mmvet"), root, None, path, str(tmp_path / "mmvet.json"))
    assert json.loads((tmp_path / "mmvet.json").read_text()) == {"v1_0": "Red.", "v1_1": "One"}

    with pytest.raises(ValueError, match="pope test has no evaluation-server upload file"):
        submission(get_benchmark("pope"), root, None, path, str(tmp_path / "x.json"))


class SimulatedKill(Exception):
    pass


class GenerateSpy:
    """Wraps `model.generate`, records each call, and raises on a given call (a kill) after reading the file."""

    def __init__(self, generate, fail_on_call=None, watch_file=None):
        self.generate, self.calls, self.fail_on_call, self.watch_file = generate, [], fail_on_call, watch_file
        self.on_disk_at_failure = None

    def __call__(self, **kwargs):
        if self.fail_on_call is not None and len(self.calls) + 1 == self.fail_on_call:
            self.on_disk_at_failure = Path(self.watch_file).read_bytes()
            raise SimulatedKill("simulated kill")
        self.calls.append({k: (v.clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()})
        return self.generate(**kwargs)


def test_resume_after_a_kill_answers_only_what_is_missing(loaded, root, tmp_path, monkeypatch):
    model, _ = loaded
    path = tmp_path / "pope.jsonl"
    generate = model.generate
    spy = GenerateSpy(generate, fail_on_call=3, watch_file=path)
    monkeypatch.setattr(model, "generate", spy)
    with pytest.raises(SimulatedKill):
        answer(loaded, "pope", root, path, batch_size=2)
    first = read_jsonl(path)
    assert [r["question_id"] for r in first] == [1, 2, 3, 4]
    assert spy.on_disk_at_failure.decode().splitlines() == [json.dumps(r) for r in first]  # flushed per batch
    with open(path, "a") as f:
        f.write('{"question_id": 5, "prompt": "Is th')  # a write torn by the kill

    spy = GenerateSpy(generate)
    monkeypatch.setattr(model, "generate", spy)
    report = answer(loaded, "pope", root, path, batch_size=2)
    rows = read_jsonl(path)
    assert [r["question_id"] for r in rows] == [1, 2, 3, 4, 5, 6, 7] and rows[:4] == first
    assert report.num_resumed == 4 and report.num_generated == 3
    assert sum(len(c["input_ids"]) for c in spy.calls) == 3
    for call in spy.calls:  # greedy, left padding
        assert call["do_sample"] is False and bool(call["attention_mask"][:, -1].all())

    # Another model may not continue this file.
    with pytest.raises(ValueError, match="model_id 'tiny' .*not by 'other'"):
        answer(loaded, "pope", root, path, model_id="other")


def test_batched_answers_equal_one_at_a_time(loaded, root, tmp_path):
    texts = {}
    for batch_size in (1, 5):
        path = tmp_path / f"scienceqa-{batch_size}.jsonl"  # mixes image and text-only questions in one batch
        answer(loaded, "scienceqa", root, path, batch_size=batch_size, max_new_tokens=6)
        texts[batch_size] = [r["text"] for r in read_jsonl(path)]
    assert texts[1] == texts[5]


def test_missing_unreadable_and_escaping_images_are_skipped_and_counted(loaded, root, tmp_path):
    import shutil

    from recipes.eval.common import skipped_file

    local = tmp_path / "root"
    shutil.copytree(Path(root) / "gqa", local / "gqa")
    images = local / "gqa" / "data" / "images"
    questions = [json.loads(line) for line in (local / "gqa" / "llava_gqa_testdev_balanced.jsonl").open()]
    (images / questions[0]["image"]).unlink()
    (images / questions[1]["image"]).write_bytes(b"not an image")
    questions[2]["image"] = "../../../../outside.jpg"
    (local / "gqa" / "llava_gqa_testdev_balanced.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    path = tmp_path / "gqa.jsonl"
    report = answer(loaded, "gqa", str(local), path)
    assert report.skipped == {"missing": 1, "unreadable": 1, "outside_image_folder": 1}
    assert report.num_generated == 0 and not read_jsonl(path)
    sidecar = json.loads(Path(skipped_file(str(path))).read_text())
    assert sidecar["skipped"] == {
        "201307251": "missing",
        "201640614": "unreadable",
        "20968379": "outside_image_folder",
    }
    result = score_answers(get_benchmark("gqa"), str(local), str(path)) if read_jsonl(path) else None
    assert result is None  # nothing answered: nothing to score

    # The image comes back: the rerun answers it, the others stay skipped and counted in the score JSON.
    shutil.copy(Path(root) / "gqa" / "data" / "images" / questions[0]["image"], images / questions[0]["image"])
    report = answer(loaded, "gqa", str(local), path)
    assert report.num_generated == 1 and report.skipped == {"unreadable": 1, "outside_image_folder": 1}
    result = score_answers(get_benchmark("gqa"), str(local), str(path))
    assert result["counts"] == {"questions": 3, "answered": 1, "missing": 2,
                                "skipped_images": {"unreadable": 1, "outside_image_folder": 1}}  # fmt: skip
    assert any("skipped by `answer` for their image" in note for note in result["notes"])


@pytest.mark.slow
def test_cli_run_prints_the_table_beside_the_papers_and_errors_are_one_line(model_dir, root, tmp_path, capsys):
    # One subprocess (`python -m recipes.eval` as users run it); one thread, as the tests share two cores.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "recipes.eval", "run", "--benchmarks", "gqa", "pope", "vqav2",
               "--eval-root", root, "--model", model_dir, "--out", str(out), "--device", "cpu",
               "--max-new-tokens", "3", "--no-progress"]  # fmt: skip
    process = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert process.returncode == 0, process.stderr[-3000:]
    table = (out / "results.md").read_text()
    assert table.strip() in process.stdout
    lines = table.splitlines()
    assert lines[0].startswith("| Benchmark | Split | Metric |") and "SQ-LLaVA-7B (paper)" in lines[0]
    gqa = next(line for line in lines if line.startswith("| GQA |"))
    measured = json.loads((out / "gqa" / "score.json").read_text())["metrics"]["accuracy"]
    assert f"| {100 * measured:.1f} | 63.7 | 62.0 | 3/3 |" in gqa
    pope = next(line for line in lines if line.startswith("| POPE |"))
    f1 = json.loads((out / "pope" / "score.json").read_text())["metrics"]["f1"]
    assert f"| {100 * f1:.1f} | 87.2 | 85.9 | 7/7 |" in pope
    vqav2 = next(line for line in lines if line.startswith("| VQAv2 |"))
    assert "server: upload" in vqav2 and len(json.loads((out / "vqav2" / "upload.json").read_text())) == 4
    assert "not measured here" in table
    summary = json.loads((out / "results.json").read_text())
    assert [row["benchmark"] for row in summary["benchmarks"]] == ["gqa", "pope", "vqav2"]

    # A user error is one line on stderr and exit status 2, not a traceback.
    from recipes.eval.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--benchmark", "gqa", "--eval-root", str(tmp_path), "--answers",
              str(out / "gqa" / "answers.jsonl"), "--output", str(tmp_path / "s.json")])  # fmt: skip
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: the GQA questions not found: expected")


class FakeJudge:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 that records requests and answers from a script."""

    def __init__(self, reply):
        import http.server
        import threading

        self.reply, self.requests = reply, []
        judge = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # http.server's method name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                content = judge.reply(body["messages"][-1]["content"])
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_judged_benchmarks_score_through_an_openai_compatible_endpoint(root, tmp_path, monkeypatch, capsys):
    from recipes.eval.__main__ import main

    monkeypatch.setenv("FAKE_JUDGE_KEY", "sk-test")

    # LLaVA-Bench: the judge gives GPT-4 8 and the model 6 on every question -> relative score 6 / 8 = 0.75.
    # MM-Vet: 1.0 when the prediction contains the ground truth's first element, else 0.0 (scripted, not a real judge).
    def reply(content):
        if content.startswith("[Context]"):
            return "8 6\nAssistant 1 is more detailed."
        prediction = content.rsplit("\n", 1)[-1].split(" | ")
        return "1.0" if len(prediction) > 2 and prediction[1].split("<")[0].strip() in prediction[2].lower() else "0.0"

    judge = FakeJudge(reply)
    try:
        path = write_answers(tmp_path / "llava_bench.jsonl", llava_rows("llava_bench", root, None, ["A", "B", "C"]))
        out = tmp_path / "llava_bench.score.json"
        main(["score", "--benchmark", "llava_bench", "--eval-root", root, "--answers", path, "--output", str(out),
              "--judge-url", judge.url, "--judge-model", "fake-gpt-4", "--judge-api-key-env", "FAKE_JUDGE_KEY"])  # fmt: skip
        result = json.loads(out.read_text())
        assert result["metrics"]["relative_score"] == pytest.approx(0.75)
        assert len(judge.requests) == 3 and judge.requests[0]["path"] == "/v1/chat/completions"
        assert judge.requests[0]["auth"] == "Bearer sk-test" and judge.requests[0]["body"]["model"] == "fake-gpt-4"
        first = judge.requests[0]["body"]["messages"][-1]["content"]
        assert "[Question]\nWhat colour is the square?" in first and "[Assistant 2]\nA\n" in first
        # A rerun reads the verdicts saved beside the output and sends nothing.
        main(["score", "--benchmark", "llava_bench", "--eval-root", root, "--answers", path, "--output", str(out),
              "--judge-url", judge.url, "--judge-model", "fake-gpt-4"])  # fmt: skip
        assert len(judge.requests) == 3
        # New answers to the same questions are judged again, not given the old verdicts.
        path = write_answers(tmp_path / "llava_bench.jsonl", llava_rows("llava_bench", root, None, ["A", "B", "D"]))
        main(["score", "--benchmark", "llava_bench", "--eval-root", root, "--answers", path, "--output", str(out),
              "--judge-url", judge.url, "--judge-model", "fake-gpt-4"])  # fmt: skip
        assert len(judge.requests) == 4
        assert "[Assistant 2]\nD\n" in judge.requests[-1]["body"]["messages"][-1]["content"]
        # A kill mid-write leaves a torn last line: the next verdict starts a line of its own and every complete
        # verdict stays readable (only the torn one would be asked again).
        cache = tmp_path / "llava_bench.score.judge.jsonl"
        with open(cache, "a", encoding="utf-8") as f:
            f.write('{"question_id": 99, "content": "7 ')
        path = write_answers(tmp_path / "llava_bench.jsonl", llava_rows("llava_bench", root, None, ["A", "E", "D"]))
        main(["score", "--benchmark", "llava_bench", "--eval-root", root, "--answers", path, "--output", str(out),
              "--judge-url", judge.url, "--judge-model", "fake-gpt-4"])  # fmt: skip
        assert len(judge.requests) == 5  # only "E" is new
        main(["score", "--benchmark", "llava_bench", "--eval-root", root, "--answers", path, "--output", str(out),
              "--judge-url", judge.url, "--judge-model", "fake-gpt-4"])  # fmt: skip
        assert len(judge.requests) == 5  # "E"'s verdict, written after the torn line, is read back
        # Another judge model does not inherit these verdicts: it is asked for every answer.
        main(["score", "--benchmark", "llava_bench", "--eval-root", root, "--answers", path, "--output", str(out),
              "--judge-url", judge.url, "--judge-model", "other-judge"])  # fmt: skip
        assert len(judge.requests) == 8 and judge.requests[-1]["body"]["model"] == "other-judge"

        path = write_answers(tmp_path / "mmvet.jsonl", llava_rows("mmvet", root, None, ["It is red.", "Two."]))
        out = tmp_path / "mmvet.score.json"
        main(["score", "--benchmark", "mmvet", "--eval-root", root, "--answers", path, "--output", str(out),
              "--judge-url", judge.url, "--judge-model", "fake-gpt-4"])  # fmt: skip
        result = json.loads(out.read_text())
        assert result["metrics"]["total"] == pytest.approx(0.5)
        assert result["per_question"] == {"v1_0": 1.0, "v1_1": 0.0}
    finally:
        judge.close()
    assert "relative_score" in capsys.readouterr().out


def test_chunks_answered_into_separate_files_score_together(loaded, root, tmp_path):
    """One process per GPU (LLaVA's --num-chunks/--chunk-idx), each its own file; `score` takes them all."""
    files = []
    for chunk_idx in range(3):
        path = tmp_path / f"pope.{chunk_idx}.jsonl"
        answer(loaded, "pope", root, path, num_chunks=3, chunk_idx=chunk_idx)
        files.append(str(path))
    # ceil(7 / 3) = 3 questions per chunk: 3, 3, 1, in order.
    assert [[r["question_id"] for r in read_jsonl(f)] for f in files] == [[1, 2, 3], [4, 5, 6], [7]]
    result = score_answers(get_benchmark("pope"), root, files)
    assert result["counts"]["answered"] == 7 and result["counts"]["missing"] == 0
    # A quick look at the first questions only: --limit in both commands.
    answer(loaded, "gqa", root, tmp_path / "gqa.jsonl", limit=2)
    result = score_answers(get_benchmark("gqa"), root, str(tmp_path / "gqa.jsonl"), limit=2)
    assert result["counts"] == {"questions": 2, "answered": 2, "missing": 0, "skipped_images": {}}


def test_answers_file_ends_in_question_order_whatever_order_it_was_answered_in(loaded, root, tmp_path):
    """LLaVA's eval_pope.py and eval_gpt_review_bench.py pair answers by position: the file is kept in question order."""
    path = tmp_path / "pope.jsonl"
    answer(loaded, "pope", root, path, num_chunks=2, chunk_idx=1)  # questions 5-7 first
    answer(loaded, "pope", root, path, num_chunks=2, chunk_idx=0)  # then 1-4, appended after them
    assert [r["question_id"] for r in read_jsonl(path)] == [1, 2, 3, 4, 5, 6, 7]
