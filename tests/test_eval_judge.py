"""recipes/eval/judge.py against a fake OpenAI-compatible judge on 127.0.0.1 started by the test.

The fake server records every request (path, headers, JSON body) and answers with scripted replies, so the tests pin
the exact prompts sent (built here by hand from the official scripts' f-strings and texts), the parsing of well- and
ill-formed judge replies, the official retry loops and the aggregation on hand-worked numbers.
"""

from __future__ import annotations

import ast
import hashlib
import http.server
import json
import subprocess
import threading
from pathlib import Path

import pytest

from recipes.eval import judge

# The review prompt of rule.json's llava_bench_conv / _detail / _complex, typed out from the file.
RULE_PROMPT = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user question "
    "displayed above. The user asks the question on observing an image. For your reference, the visual content in the "
    "image is represented with a few sentences describing the image. \n"
    "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant receives "
    "an overall score on a scale of 1 to 10, where a higher score indicates better overall performance.\n"
    "Please first output a single line containing only two values indicating the scores for Assistant 1 and 2, "
    "respectively. The two scores are separated by a space.\n"
    "In the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any potential "
    "bias and ensuring that the order in which the responses were presented does not affect your judgment."
)
# sha256 of mm-vet_evaluator.py's `prompt` (yuweihao/MM-Vet c7ff270), computed from the official file.
MMVET_PROMPT_SHA256 = "d1b3e0a5b4e72c888b77164489d705bba4dd149934fff564dfba6443d81afe3f"
LLAVA_MIRROR = Path("/work/.mirror/haotian-liu+LLaVA/repo")
MMVET_MIRROR = Path("/work/.mirror/yuweihao+MM-Vet/repo")


class FakeJudge:
    """A tiny OpenAI-compatible server: `reply(body) -> content str | (status, payload)` scripts each answer."""

    def __init__(self, reply):
        self.requests = []
        self.reply = reply
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                answer = outer.reply(body)
                status, payload = answer if isinstance(answer, tuple) else (200, answer)
                if status == 200 and not isinstance(payload, dict):
                    payload = {"model": body["model"] + "-served", "choices": [{"message": {"content": payload}}]}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _user_message(request):
    return next(m for m in request["body"]["messages"] if m["role"] == "user")["content"]


# ---------------------------------------------------------------------------------------------------------------
# LLaVA-Bench-in-the-wild


QUESTIONS = [
    {"question_id": 0, "image": "001.jpg", "text": "What color is the car?", "category": "conv"},
    {"question_id": 1, "image": "001.jpg", "text": "Describe the image.", "category": "conv"},
    {"question_id": 2, "image": "002.jpg", "text": "Describe the scene in detail.", "category": "detail"},
    {"question_id": 3, "image": "002.jpg", "text": "Why is the man smiling?", "category": "complex"},
]
CONTEXTS = [
    {"image": "001.jpg", "caption": ["A red car.", "Parked on a street."]},
    {"image": "002.jpg", "caption": "A man."},
]
GPT4 = [{"question_id": q, "text": f"gpt4 answer {q}", "answer_id": f"g{q}"} for q in range(4)]
# The model's answers in another order: they are matched by question_id.
MODEL = [{"question_id": q, "text": f"model answer {q}", "answer_id": f"m{q}"} for q in (3, 2, 1, 0)]


def test_llava_bench_sends_the_official_review_prompt(monkeypatch):
    # The message eval_gpt_review_bench.py builds for question 0, written out from its f-strings: the two captions
    # joined by a newline, GPT-4 as Assistant 1, the model as Assistant 2, rule.json's prompt, two newlines.
    expected = (
        "[Context]\nA red car.\nParked on a street.\n\n"
        "[Question]\nWhat color is the car?\n\n"
        "[Assistant 1]\ngpt4 answer 0\n\n[End of Assistant 1]\n\n"
        "[Assistant 2]\nmodel answer 0\n\n[End of Assistant 2]\n\n"
        f"[System]\n{RULE_PROMPT}\n\n"
    )
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test-123")
    with FakeJudge(lambda body: "8 6\nBoth fine.") as server:
        result = judge.review_llava_bench(
            QUESTIONS[:1], CONTEXTS, GPT4, MODEL, url=server.url, api_key_env="MY_JUDGE_KEY"
        )
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test-123"
    assert request["body"]["messages"] == [
        {
            "role": "system",
            "content": "You are a helpful and precise assistant for checking the quality of the answer.",
        },
        {"role": "user", "content": expected},
    ]
    assert _user_message(request).encode("utf-8") == expected.encode("utf-8")
    assert (request["body"]["model"], request["body"]["temperature"], request["body"]["max_tokens"]) == (
        "gpt-4-0314", 0.2, 1024,
    )  # fmt: skip
    assert result["reviews"] == [
        {"id": 1, "question_id": 0, "answer1_id": "g0", "answer2_id": "m0", "category": "llava_bench_conv",
         "content": "8 6\nBoth fine.", "tuple": [8.0, 6.0]},
    ]  # fmt: skip


@pytest.mark.parametrize(
    "review, scores",
    [
        ("8 9\nAssistant 2 is more detailed.", [8.0, 9.0]),
        ("8,9\n...", [8.0, 9.0]),  # the comma becomes a space
        ("7.5 8.5", [7.5, 8.5]),
        ("8, 9\n...", [-1, -1]),  # "8  9": three fields after the replacement
        ("Scores: 8 9", [-1, -1]),
        ("8 9 ", [-1, -1]),  # a trailing space is a third (empty) field
        ("eight nine", [-1, -1]),
        ("", [-1, -1]),
        (None, [-1, -1]),  # no content in the reply
        ("nan nan", [-1, -1]),  # would poison the means: treated as unreadable
    ],
)
def test_llava_bench_score_parsing(review, scores):
    assert judge.parse_llava_bench_scores(review) == scores


def test_llava_bench_summary_by_hand_with_a_malformed_review():
    replies = {"0": "8 6", "1": "10 9\nGreat.", "2": "8 4", "3": "I cannot rate this."}
    with FakeJudge(lambda body: replies[_question_of(body)]) as server:
        result = judge.review_llava_bench(QUESTIONS, CONTEXTS, GPT4, MODEL, url=server.url, api_key_env=None)
    assert "Authorization" not in server.requests[0]["headers"]
    # Tuples: conv (8, 6), (10, 9); detail (8, 4); complex unreadable -> (-1, -1), counted as such (official).
    # all: GPT-4 mean (8 + 10 + 8 - 1) / 4 = 6.25, model mean (6 + 9 + 4 - 1) / 4 = 4.5, relative 4.5 / 6.25 = 0.72.
    # conv: 9 and 7.5 -> 0.8333...; detail: 8 and 4 -> 0.5; complex: -1 / -1 = 1.0.
    metrics = result["metrics"]
    assert metrics["relative_score"] == pytest.approx(0.72, abs=1e-15)
    assert (metrics["gpt4_score"], metrics["model_score"]) == (pytest.approx(0.625), pytest.approx(0.45))
    assert metrics["relative_score_conv"] == pytest.approx(7.5 / 9)
    assert metrics["relative_score_detail"] == 0.5 and metrics["relative_score_complex"] == 1.0
    assert (metrics["gpt4_score_conv"], metrics["model_score_conv"]) == (pytest.approx(0.9), pytest.approx(0.75))
    assert result["per_question"] == {0: 0.6, 1: 0.9, 2: 0.4, 3: -0.1}
    assert len(result["notes"]) == 1 and "3" in result["notes"][0]
    # The official summary prints round(stats[1] / stats[0] * 100, 1) from means rounded to 3 decimals: 72.0.
    assert round(round(4.5, 3) / round(6.25, 3) * 100, 1) == round(100 * metrics["relative_score"], 1)


def _question_of(body):
    return _user_message({"body": body}).split("model answer ")[1][0]


def test_llava_bench_retries_reuses_cached_reviews_and_needs_a_url():
    calls = {"n": 0}

    def flaky(body):
        calls["n"] += 1
        return (500, {"error": "overloaded"}) if calls["n"] == 1 else "7 7"

    with FakeJudge(flaky) as server:
        result = judge.review_llava_bench(
            QUESTIONS[:2], CONTEXTS, GPT4, MODEL, url=server.url, api_key_env=None, retry_sleep=0,
            cached_reviews=[{"question_id": 1, "content": "9 3", "tuple": [9.0, 3.0]}],
        )  # fmt: skip
    # Question 0: a 500, then "7 7" (two requests); question 1 comes from the cache (no request).
    assert len(server.requests) == 2
    assert [review["tuple"] for review in result["reviews"]] == [[7.0, 7.0], [9.0, 3.0]]
    with (
        FakeJudge(lambda body: (503, {"error": "down"})) as server,
        pytest.raises(judge.JudgeError, match="question 0.*2 attempts"),
    ):
        judge.review_llava_bench(QUESTIONS[:1], CONTEXTS, GPT4, MODEL, url=server.url, max_retries=1, retry_sleep=0)
    with pytest.raises(ValueError, match="url"):
        judge.review_llava_bench(QUESTIONS, CONTEXTS, GPT4, MODEL, url="")
    with pytest.raises(ValueError, match="model_answers has no answer for question_id 0"):
        judge.review_llava_bench(QUESTIONS[:1], CONTEXTS, GPT4, MODEL[:3], url="http://127.0.0.1:9")


@pytest.mark.skipif(not LLAVA_MIRROR.is_dir(), reason="LLaVA's source mirror is not on this machine")
def test_llava_bench_rules_are_byte_identical_to_rule_json():
    shown = subprocess.run(
        ["git", "-C", str(LLAVA_MIRROR), "show", "HEAD:llava/eval/table/rule.json"], check=True, capture_output=True
    )
    rules = json.loads(shown.stdout)
    assert {key: rules[key] for key in judge.LLAVA_BENCH_RULES} == judge.LLAVA_BENCH_RULES
    assert judge.LLAVA_BENCH_PROMPT == RULE_PROMPT


# ---------------------------------------------------------------------------------------------------------------
# MM-Vet


SAMPLES = {
    "v1_0": {"question": "What is x in the equation?", "answer": "-1<AND>-5", "capability": ["math", "ocr"]},
    "v1_1": {"question": "What color is the sign?", "answer": "red<OR>crimson", "capability": ["rec"]},
    "v1_2": {"question": "What does it say?", "answer": "STOP", "capability": ["ocr"]},
}
ANSWERS = {"v1_0": "x = -1", "v1_1": "It is red.", "v1_2": "stop"}


def test_mmvet_sends_the_official_grading_prompt():
    assert hashlib.sha256(judge.MMVET_PROMPT.encode("utf-8")).hexdigest() == MMVET_PROMPT_SHA256
    assert judge.MMVET_PROMPT.startswith("Compare the ground truth and prediction from AI models, to give a")
    assert judge.MMVET_PROMPT.endswith("the names of the countries and their actual physical characteristics. | 1.0\n")
    # mm-vet_evaluator.py: prompt + "\n" + " | ".join([question, answer with spaced <AND>/<OR>, prediction, ""]).
    expected = judge.MMVET_PROMPT + "\nWhat is x in the equation? | -1 <AND> -5 | x = -1 | "
    with FakeJudge(lambda body: "0.5") as server:
        result = judge.grade_mmvet({"v1_0": SAMPLES["v1_0"]}, ANSWERS, url=server.url, api_key_env=None)
    (request,) = server.requests
    assert request["body"]["messages"] == [{"role": "user", "content": expected}]
    assert (request["body"]["model"], request["body"]["temperature"], request["body"]["max_tokens"]) == (
        "gpt-4-0613", 0.0, 3,
    )  # fmt: skip
    assert result["reviews"] == {"v1_0": {"model": ["gpt-4-0613-served"], "content": ["0.5"], "score": [0.5]}}


@pytest.mark.parametrize(
    "content, score",
    [
        ("0.6", 0.6),
        ("0.6 The prediction", 0.6),  # the first space-separated word
        ("1.0\n", 1.0),  # "1.0\n" is stripped
        ("0", 0.0),
        ("Correctness: 0.5", None),
        ("1.5", None),  # outside [0, 1]
        ("-0.1", None),
        ("", None),
        (None, None),
        ("nan", None),  # float("nan") passes the official range check; treated as unreadable here
    ],
)
def test_mmvet_score_parsing(content, score):
    assert judge.parse_mmvet_score(content) == score


def _sample_of(text):
    """The sample a grading message is about, from the part after the (shared) prompt."""
    tail = text[len(judge.MMVET_PROMPT) :]
    return next(sample_id for sample_id, sample in SAMPLES.items() if tail.startswith("\n" + sample["question"]))


def test_mmvet_reasks_as_the_official_loop_and_aggregates_by_hand():
    script = {"v1_0": ["The answer is half right", "0.4"], "v1_1": ["x"] * 5 + ["0.9"], "v1_2": [(429, {}), "1.0"]}

    def reply(body):
        return script[_sample_of(_user_message({"body": body}))].pop(0)

    with FakeJudge(reply) as server:
        result = judge.grade_mmvet(SAMPLES, ANSWERS, url=server.url, api_key_env=None, rate_limit_sleep=0)
    by_sample = {}
    for request in server.requests:
        text = _user_message(request)
        retry = text.endswith(judge.MMVET_RETRY_SUFFIX)
        by_sample.setdefault(_sample_of(text), []).append((retry, request["body"]["temperature"]))
    # v1_0: unreadable, then a re-ask (with the "digit" suffix, still at temperature 0.0) answered 0.4.
    assert by_sample["v1_0"] == [(False, 0.0), (True, 0.0)]
    # v1_1: five unreadable replies read; a sixth re-ask is sent at 2.0 and not read: 0.0 (official).
    assert by_sample["v1_1"] == [(False, 0.0), (True, 0.0), (True, 0.5), (True, 1.0), (True, 1.5), (True, 2.0)]
    # v1_2: HTTP 429, wait, the same request again.
    assert by_sample["v1_2"] == [(False, 0.0), (False, 0.0)]
    assert result["per_question"] == {"v1_0": 0.4, "v1_1": 0.0, "v1_2": 1.0}
    assert result["reviews"]["v1_0"]["content"] == ["0.4"] and result["reviews"]["v1_1"]["content"] == ["0.9"]
    assert len(result["notes"]) == 1 and result["notes"][0].startswith("v1_1")
    # Capabilities: math {v1_0}, ocr {v1_0, v1_2}, rec {v1_1}. total = (0.4 + 0 + 1) / 3.
    metrics = result["metrics"]
    assert metrics["total"] == pytest.approx(1.4 / 3, abs=1e-15) and metrics["total_std"] == 0.0
    assert metrics["capability_ocr"] == pytest.approx(0.7) and metrics["capability_math"] == pytest.approx(0.4)
    assert metrics["capability_rec"] == 0.0
    assert metrics["integration_math_ocr"] == pytest.approx(0.4) and metrics["integration_ocr"] == 1.0


def test_mmvet_runs_mean_std_cache_and_missing_answers():
    grades = {"v1_0": {"score": [0.4, 0.6]}, "v1_1": {"score": [0.0, 0.2]}, "v1_2": {"score": [1.0, 1.0]}}
    metrics = judge.summarize_mmvet(SAMPLES, grades, num_runs=2)
    # Per-run totals 1.4 / 3 and 1.8 / 3: mean 1.6 / 3, population std 0.2 / 3.
    assert metrics["total"] == pytest.approx(1.6 / 3) and metrics["total_std"] == pytest.approx(0.2 / 3)
    assert metrics["capability_ocr"] == pytest.approx(((0.4 + 1.0) / 2 + (0.6 + 1.0) / 2) / 2)
    cached = {"v1_0": {"model": ["j"], "content": ["0.4"], "score": [0.4]}}
    saved = []
    with FakeJudge(lambda body: "1.0") as server:
        result = judge.grade_mmvet(
            SAMPLES, ANSWERS, url=server.url, api_key_env=None, cached_grades=cached,
            on_grade=lambda sample_id, grade: saved.append(sample_id),
        )  # fmt: skip
    assert len(server.requests) == 2 and saved == ["v1_1", "v1_2"]  # v1_0 came from the cache
    assert result["per_question"] == {"v1_0": 0.4, "v1_1": 1.0, "v1_2": 1.0}
    # Two runs (mm-vet_evaluator.py's num_run): v1_0's cached grade is run 0, every other grade is asked; each
    # sample keeps both runs' scores and per_question is their mean.
    replies = iter(["0.2", "0.6", "1.0", "0.0", "0.8"])
    with FakeJudge(lambda body: next(replies)) as server:
        result = judge.grade_mmvet(SAMPLES, ANSWERS, url=server.url, api_key_env=None, cached_grades=cached, num_runs=2)
    assert len(server.requests) == 5
    assert {k: v["score"] for k, v in result["reviews"].items()} == {
        "v1_0": [0.4, 1.0], "v1_1": [0.2, 0.0], "v1_2": [0.6, 0.8]
    }  # fmt: skip
    assert result["per_question"] == pytest.approx({"v1_0": 0.7, "v1_1": 0.1, "v1_2": 0.7})
    with pytest.raises(ValueError, match="no prediction for 1 MM-Vet samples"):
        judge.grade_mmvet(SAMPLES, {"v1_0": "a", "v1_1": "b"}, url="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="url"):
        judge.grade_mmvet(SAMPLES, ANSWERS, url=None)


@pytest.mark.skipif(not MMVET_MIRROR.is_dir(), reason="MM-Vet's source mirror is not on this machine")
def test_mmvet_prompt_is_byte_identical_to_the_official_evaluator():
    shown = subprocess.run(
        ["git", "-C", str(MMVET_MIRROR), "show", "HEAD:mm-vet_evaluator.py"],
        check=True,
        capture_output=True,
        text=True,
    )
    tree = ast.parse(shown.stdout)
    official = next(
        node.value.value for node in tree.body if isinstance(node, ast.Assign) and node.targets[0].id == "prompt"
    )
    assert judge.MMVET_PROMPT == official
    assert '+ "\\nPredict the correctness of the answer (digit): "' in shown.stdout
