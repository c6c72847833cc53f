"""Judge-model scoring of LLaVA-Bench-in-the-wild and MM-Vet through any OpenAI-compatible endpoint.

Both benchmarks are scored by a judge model. This module reproduces the official scorers' prompts, parsing, retries and
aggregation, and talks to `POST {url}/chat/completions` with the standard library only. Nothing is sent anywhere
unless the caller passes `url`; the API key is read from the environment variable the caller names (default
`OPENAI_API_KEY`; none is needed for a local server) and is never logged.

LLaVA-Bench-in-the-wild, as LLaVA's `llava/eval/eval_gpt_review_bench.py` + `llava/eval/summarize_gpt_review.py`:
the judge sees the image's context (caption), the question, GPT-4's answer (Assistant 1) and the model's answer
(Assistant 2) with the review prompt of the question's category from `llava/eval/table/rule.json`, and is asked for
two 1-10 scores on its first line. The summary averages the two scores per category and over all questions; the
reported LLaVA-Bench figure (SQ-LLaVA-7B: 74.3) is the relative score 100 x mean(model) / mean(GPT-4) of "all".

MM-Vet, as `mm-vet_evaluator.py` of yuweihao/MM-Vet: the grading prompt with its few-shot table, the judge's 0.0-1.0
correctness parsed from the first word of its reply, up to five re-asks with a "digit" suffix and rising temperature,
then per-capability and total scores (the reported MM-Vet figure, SQ-LLaVA-7B: 37.6, is 100 x total).

Functions the evaluation CLI calls:

    review_llava_bench(questions, contexts, gpt4_answers, model_answers, rules=None, *, url, model="gpt-4-0314",
                       api_key_env="OPENAI_API_KEY", temperature=0.2, max_tokens=1024, timeout=120.0,
                       max_retries=5, retry_sleep=0.5, cached_reviews=None, on_review=None)
        -> {"metrics": {...}, "per_question": {question_id: float}, "reviews": [review, ...], "notes": [...]}
    grade_mmvet(samples, answers, *, url, model="gpt-4-0613", api_key_env="OPENAI_API_KEY", num_runs=1,
                timeout=120.0, max_retries=2, retry_sleep=1.0, rate_limit_sleep=30.0, rate_limit_retries=20,
                cached_grades=None, on_grade=None)
        -> {"metrics": {...}, "per_question": {sample_id: float}, "reviews": {sample_id: grade, ...}, "notes": [...]}

and the pieces they are made of: `chat_completion`, `llava_bench_review_content`, `parse_llava_bench_scores`,
`summarize_llava_bench`, `mmvet_grading_question`, `parse_mmvet_score`, `summarize_mmvet`.

Where this module departs from the official scripts, on purpose:
- LLaVA-Bench answers are matched to questions by `question_id` (the official script zips the three files line by
  line, which silently mis-pairs files in different orders).
- The official LLaVA-Bench client retries forever; here a request is retried `max_retries` times, `retry_sleep`
  seconds apart, then `JudgeError` names the question. MM-Vet: the official script sleeps 30 s and retries on a rate
  limit (HTTP 429) without bound and crashes on any other error; here `rate_limit_retries` bounds the former and
  transport errors / 5xx are retried `max_retries` times (as the openai client it uses does by default).
- A judge score that parses to NaN or infinity is treated as unparsable (the official parsers would let NaN poison
  the means).
- MM-Vet capability-integration names join the capabilities in sorted order (the official joins a Python set, whose
  order changes between runs).

>>> rule = LLAVA_BENCH_RULES["llava_bench_conv"]
>>> llava_bench_review_content("A dog on grass.", "What is it?", "A dog.", "It is a dog.", rule).splitlines()[:5]
['[Context]', 'A dog on grass.', '', '[Question]', 'What is it?']
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

# =====================================================================================================================
# Official prompt texts. DATA, NOT CODE: byte-identical copies of the official strings; do not edit.
#
# LLAVA_BENCH_PROMPT: the "prompt" of "llava_bench_conv", "llava_bench_detail" and "llava_bench_complex" (the three
#   are identical) in haotian-liu/LLaVA llava/eval/table/rule.json, last changed in commit
#   181a2f811f1eb0b794c25e87204491d812c05f8d (repository HEAD c121f0432da27facab705978f83c4ada465e46fd); "role" is
#   "Assistant" for all three. SQ-LLaVA ships no rule.json of its own.
# LLAVA_BENCH_SYSTEM_PROMPT: the system message of eval_gpt_review_bench.py's get_eval (same commit).
# MMVET_PROMPT, MMVET_RETRY_SUFFIX: the `prompt` and the re-ask suffix of yuweihao/MM-Vet mm-vet_evaluator.py, last
#   changed in commit c7ff270d86fb79c42346214366f4192c0e08b042 (repository HEAD
#   acde843e02dae30047bb456ee4a8ab28dee7e0ae).
# =====================================================================================================================
LLAVA_BENCH_PROMPT = (
    "We would like to request your feedback on the performance of two AI assistants in response to the "
    "user question displayed above. The user asks the question on observing an image. For your "
    "reference, the visual content in the image is represented with a few sentences describing the "
    "image. \n"
    "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each "
    "assistant receives an overall score on a scale of 1 to 10, where a higher score indicates better "
    "overall performance.\n"
    "Please first output a single line containing only two values indicating the scores for Assistant 1 "
    "and 2, respectively. The two scores are separated by a space.\n"
    "In the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any "
    "potential bias and ensuring that the order in which the responses were presented does not affect "
    "your judgment."
)
LLAVA_BENCH_ROLE = "Assistant"
LLAVA_BENCH_RULES = {
    f"llava_bench_{category}": {"role": LLAVA_BENCH_ROLE, "prompt": LLAVA_BENCH_PROMPT}
    for category in ("conv", "detail", "complex")
}
LLAVA_BENCH_SYSTEM_PROMPT = "You are a helpful and precise assistant for checking the quality of the answer."
MMVET_PROMPT = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
"""
MMVET_RETRY_SUFFIX = "\nPredict the correctness of the answer (digit): "
# =====================================================================================================================

# Request settings of the official scripts.
LLAVA_BENCH_JUDGE = "gpt-4-0314"
LLAVA_BENCH_TEMPERATURE = 0.2
LLAVA_BENCH_MAX_TOKENS = 1024
MMVET_JUDGE = "gpt-4-0613"
MMVET_MAX_TOKENS = 3
MMVET_MAX_TRIES = 5  # the first answer plus re-asks; the official loop stops once `try_time > 5`


class JudgeError(RuntimeError):
    """The judge endpoint failed (after the retries the caller allowed)."""


class JudgeRateLimitError(JudgeError):
    """The judge endpoint answered HTTP 429 (rate limit)."""


# ---------------------------------------------------------------------------------------------------------------------
# The OpenAI-compatible client
# ---------------------------------------------------------------------------------------------------------------------


def chat_completion(
    url: str,
    model: str,
    messages: Sequence[Mapping[str, str]],
    api_key: str | None = None,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """One `POST {url}/chat/completions` request; returns the decoded JSON response.

    Args:
        url: the API base, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8000/v1` (no trailing
            `/chat/completions`).
        model: the judge model name sent as `model`.
        messages: the chat messages (`{"role": ..., "content": ...}`).
        api_key: sent as `Authorization: Bearer <api_key>` when given.
        temperature: sampling temperature.
        max_tokens: the `max_tokens` of the request (omitted when None).
        timeout: seconds to wait for the response.

    Raises:
        JudgeRateLimitError: on HTTP 429.
        JudgeError: on any other HTTP error, a network error or a response that is not JSON.
    """
    if not url or not isinstance(url, str):
        raise ValueError(f"url={url!r}: pass the judge's OpenAI-compatible API base, e.g. 'http://127.0.0.1:8000/v1'.")
    body: dict[str, Any] = {"model": model, "messages": [dict(message) for message in messages]}
    body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(
        url.rstrip("/") + "/chat/completions", data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as error:
        detail = error.read()[:300].decode("utf-8", "replace")
        if error.code == 429:
            raise JudgeRateLimitError(f"judge rate limit (HTTP 429) at {request.full_url}: {detail}") from error
        raise JudgeError(f"judge request failed with HTTP {error.code} at {request.full_url}: {detail}") from error
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise JudgeError(f"judge request to {request.full_url} failed: {error}") from error
    try:
        return json.loads(payload)
    except json.JSONDecodeError as error:
        raise JudgeError(f"judge at {request.full_url} answered non-JSON: {payload[:200]!r}") from error


def completion_text(response: Mapping[str, Any]) -> str | None:
    """`choices[0].message.content` of a chat completion (None when absent)."""
    try:
        return response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None


def _api_key(api_key_env: str | None) -> str | None:
    return os.environ.get(api_key_env) if api_key_env else None


def _with_retries(
    call: Callable[[], dict], what: str, max_retries: int, retry_sleep: float, passthrough: tuple = ()
) -> dict:
    """`call()`, retried `max_retries` times on `JudgeError`, `retry_sleep` seconds apart; `passthrough` errors are
    raised at once (MM-Vet handles rate limits itself)."""
    for attempt in range(max_retries + 1):
        try:
            return call()
        except passthrough:
            raise
        except JudgeError as error:
            if attempt == max_retries:
                raise JudgeError(f"{what}: giving up after {max_retries + 1} attempts: {error}") from error
            time.sleep(retry_sleep)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------------------------
# LLaVA-Bench-in-the-wild (eval_gpt_review_bench.py + summarize_gpt_review.py)
# ---------------------------------------------------------------------------------------------------------------------


def llava_bench_review_content(
    context: str | Sequence[str], question: str, gpt4_answer: str, model_answer: str, rule: Mapping[str, str]
) -> str:
    """The user message eval_gpt_review_bench.py sends for one question.

    Args:
        context: the image's `caption` from context.jsonl (a list of captions is joined with newlines, as there).
        question: the question `text`.
        gpt4_answer: GPT-4's answer `text` (answers_gpt4.jsonl), shown as Assistant 1.
        model_answer: the evaluated model's answer `text`, shown as Assistant 2.
        rule: the rule.json entry of the question's category (`role` and `prompt`).
    """
    caption = "\n".join(context) if isinstance(context, (list, tuple)) else context
    role, prompt = rule["role"], rule["prompt"]
    return (
        f"[Context]\n{caption}\n\n"
        f"[Question]\n{question}\n\n"
        f"[{role} 1]\n{gpt4_answer}\n\n[End of {role} 1]\n\n"
        f"[{role} 2]\n{model_answer}\n\n[End of {role} 2]\n\n"
        f"[System]\n{prompt}\n\n"
    )


def parse_llava_bench_scores(review: str | None) -> list[float]:
    """eval_gpt_review_bench.py's `parse_score`: the two numbers of the review's first line, [-1, -1] if unreadable.

    The first line has its commas turned into spaces and is split on single spaces; exactly two fields that parse as
    floats are the scores. "8 9" and "8,9" read [8, 9]; "8, 9" (two spaces after the replacement), "Scores: 8 9",
    "8 9 " and a missing review give [-1, -1], as in the official script.
    """
    try:
        fields = review.split("\n")[0].replace(",", " ").split(" ")
        if len(fields) == 2:
            scores = [float(fields[0]), float(fields[1])]
            if all(math.isfinite(score) for score in scores):
                return scores
        return [-1, -1]
    except (AttributeError, ValueError):
        return [-1, -1]


def summarize_llava_bench(reviews: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """summarize_gpt_review.py's figures, unrounded, per category and for "all".

    For each group g ("all" and each category without its "llava_bench_" prefix): `gpt4_score_<g>` and
    `model_score_<g>` are the mean judge scores divided by 10 (fractions of the 10-point scale; the official prints
    10 x mean, e.g. 7.8), and `relative_score_<g>` = mean(model) / mean(GPT-4) (the official prints it x 100 with one
    decimal, from means first rounded to 3 decimals; it can exceed 1.0 when the model beats GPT-4). "all" is also
    reported without suffix: `relative_score`, `gpt4_score`, `model_score`. Unparsable reviews count as [-1, -1] in
    the means, as in the official summary.
    """
    groups: dict[str, list[Sequence[float]]] = {}
    for review in reviews:
        pair = review["tuple"]
        category = str(review.get("category", "")).removeprefix("llava_bench_")
        groups.setdefault("all", []).append(pair)
        if category:
            groups.setdefault(category, []).append(pair)
    metrics: dict[str, float] = {}
    for group in sorted(groups):
        pairs = groups[group]
        gpt4 = sum(float(pair[0]) for pair in pairs) / len(pairs)
        model = sum(float(pair[1]) for pair in pairs) / len(pairs)
        suffix = "" if group == "all" else f"_{group}"
        metrics[f"relative_score{suffix}"] = model / gpt4 if gpt4 else 0.0
        metrics[f"gpt4_score{suffix}"] = gpt4 / 10
        metrics[f"model_score{suffix}"] = model / 10
    return metrics


def _by_question_id(rows: Sequence[Mapping[str, Any]], name: str) -> dict[Any, Mapping[str, Any]]:
    table: dict[Any, Mapping[str, Any]] = {}
    for index, row in enumerate(rows):
        if "question_id" not in row:
            raise ValueError(f"{name}[{index}] has no 'question_id': {dict(row)!r}")
        if row["question_id"] in table:
            raise ValueError(f"{name} has question_id {row['question_id']!r} twice (rows {index} and before).")
        table[row["question_id"]] = row
    return table


def review_llava_bench(
    questions: Sequence[Mapping[str, Any]],
    contexts: Sequence[Mapping[str, Any]],
    gpt4_answers: Sequence[Mapping[str, Any]],
    model_answers: Sequence[Mapping[str, Any]],
    rules: Mapping[str, Mapping[str, str]] | None = None,
    *,
    url: str,
    model: str = LLAVA_BENCH_JUDGE,
    api_key_env: str | None = "OPENAI_API_KEY",
    temperature: float = LLAVA_BENCH_TEMPERATURE,
    max_tokens: int = LLAVA_BENCH_MAX_TOKENS,
    timeout: float = 120.0,
    max_retries: int = 5,
    retry_sleep: float = 0.5,
    cached_reviews: Sequence[Mapping[str, Any]] | None = None,
    on_review: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Reviews every LLaVA-Bench-in-the-wild question with the judge and summarises as the official scripts do.

    Args:
        questions: the rows of `questions.jsonl` (`question_id`, `image`, `text`, `category`).
        contexts: the rows of `context.jsonl` (`image`, `caption`).
        gpt4_answers: the rows of `answers_gpt4.jsonl` (`question_id`, `text`, optional `answer_id`).
        model_answers: the model's answers in LLaVA's answer-file format (`question_id`, `text`, `answer_id`).
        rules: rule.json's content; None uses the official LLaVA-Bench rules (`LLAVA_BENCH_RULES`).
        url: the judge's OpenAI-compatible API base (required: nothing is sent without it).
        model: the judge model (the official script uses "gpt-4-0314").
        api_key_env: the environment variable holding the API key (None or unset: no key sent).
        temperature, max_tokens: the request settings (official: 0.2 and 1024).
        timeout: seconds per request.
        max_retries, retry_sleep: retries of a failed request and the pause between them (official: forever, 0.5 s).
        cached_reviews: reviews from an earlier run (the `reviews` of a previous result); a question whose review is
            there is not sent again.
        on_review: called with each new review as soon as it is made (to save progress).

    Returns:
        `{"metrics": summarize_llava_bench(reviews), "per_question": {question_id: model score / 10},
        "reviews": [...], "notes": [...]}`. Each review has the official fields `id`, `question_id`, `answer1_id`,
        `answer2_id`, `category`, `content` (the judge's text) and `tuple` ([GPT-4 score, model score], [-1, -1]
        when unparsable; per_question is then -0.1, which is what enters the official means).
    """
    if not url:
        raise ValueError("review_llava_bench needs url=<the judge's OpenAI-compatible API base>; nothing was sent.")
    rules = LLAVA_BENCH_RULES if rules is None else rules
    captions = {}
    for index, row in enumerate(contexts):
        if "image" not in row or "caption" not in row:
            raise ValueError(f"contexts[{index}] needs 'image' and 'caption' (context.jsonl); got keys {sorted(row)}.")
        captions[row["image"]] = row["caption"]
    gpt4_by_id = _by_question_id(gpt4_answers, "gpt4_answers")
    model_by_id = _by_question_id(model_answers, "model_answers")
    cached = {review["question_id"]: review for review in (cached_reviews or [])}
    api_key = _api_key(api_key_env)
    reviews, notes = [], []
    for index, question in enumerate(questions):
        qid = question["question_id"]
        for table, name in ((gpt4_by_id, "gpt4_answers"), (model_by_id, "model_answers")):
            if qid not in table:
                raise ValueError(f"{name} has no answer for question_id {qid!r}.")
        if question.get("image") not in captions:
            raise ValueError(f"question {qid!r}: image {question.get('image')!r} has no caption in contexts.")
        category = "llava_bench_" + question["category"]
        if category not in rules:
            raise ValueError(f"question {qid!r}: category {category!r} is not in the rules ({sorted(rules)}).")
        gpt4, answer = gpt4_by_id[qid], model_by_id[qid]
        review = {
            "id": index + 1,
            "question_id": qid,
            "answer1_id": gpt4.get("answer_id", gpt4["question_id"]),
            "answer2_id": answer.get("answer_id", answer["question_id"]),
            "category": category,
        }
        if qid in cached:
            review["content"], review["tuple"] = cached[qid]["content"], list(cached[qid]["tuple"])
        else:
            content = llava_bench_review_content(
                captions[question["image"]], question["text"], gpt4["text"], answer["text"], rules[category]
            )
            messages = [
                {"role": "system", "content": LLAVA_BENCH_SYSTEM_PROMPT},
                {"role": "user", "content": content},
            ]
            response = _with_retries(
                lambda messages=messages: chat_completion(
                    url, model, messages, api_key, temperature=temperature, max_tokens=max_tokens, timeout=timeout
                ),
                f"LLaVA-Bench review of question {qid!r}",
                max_retries,
                retry_sleep,
            )
            review["content"] = completion_text(response)
            review["tuple"] = parse_llava_bench_scores(review["content"])
            if on_review is not None:
                on_review(review)
        if review["tuple"] == [-1, -1]:
            notes.append(f"question {qid!r}: the judge's first line gave no two scores; counted as [-1, -1]")
        reviews.append(review)
    per_question = {review["question_id"]: float(review["tuple"][1]) / 10 for review in reviews}
    return {
        "metrics": summarize_llava_bench(reviews),
        "per_question": per_question,
        "reviews": reviews,
        "notes": notes,
    }


# ---------------------------------------------------------------------------------------------------------------------
# MM-Vet (mm-vet_evaluator.py)
# ---------------------------------------------------------------------------------------------------------------------


def mmvet_grading_question(question: str, answer: str, prediction: str, retry: bool = False) -> str:
    """The user message mm-vet_evaluator.py sends: its prompt, a newline, then "question | answer | prediction | ".

    Args:
        question: the sample's `question` (mm-vet.json).
        answer: the sample's ground-truth `answer`; "<AND>" / "<OR>" get a space on each side, as there.
        prediction: the model's answer.
        retry: append the re-ask suffix used after an unparsable reply.
    """
    answer = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    text = MMVET_PROMPT + "\n" + f"{question} | {answer} | {prediction} | "
    return text + MMVET_RETRY_SUFFIX if retry else text


def parse_mmvet_score(content: str | None) -> float | None:
    """mm-vet_evaluator.py's parsing: the text before the first space, stripped, as a float in [0, 1]; else None."""
    try:
        score = float(content.split(" ")[0].strip())
    except (AttributeError, ValueError):
        return None
    return score if math.isfinite(score) and 0.0 <= score <= 1.0 else None


def _grade_mmvet_sample(
    question_text: str,
    retry_text: str,
    send: Callable[[list[dict], float], dict],
    rate_limit_retries: int,
    rate_limit_sleep: float,
    what: str,
) -> tuple[float, str | None, str | None, bool]:
    """One grading run of one sample, following the official loop: (score, stored content, judge model, gave up)."""
    temperature = 0.0
    messages = [{"role": "user", "content": question_text}]
    rate_limited = 0
    while True:
        try:
            response = send(messages, temperature)
            content = completion_text(response)
            tries, gave_up = 1, False
            while True:
                score = parse_mmvet_score(content)
                if score is not None:
                    content = content.split(" ")[0].strip()  # the official script stores the parsed token
                    break
                messages = [{"role": "user", "content": retry_text}]
                response = send(messages, temperature)
                content = completion_text(response)
                tries += 1
                temperature += 0.5
                if tries > MMVET_MAX_TRIES:
                    # Five replies were read; the official loop sends a sixth re-ask, does not read it, and scores 0.0.
                    score, gave_up = 0.0, True
                    break
            return score, content, response.get("model") if isinstance(response, Mapping) else None, gave_up
        except JudgeRateLimitError as error:
            rate_limited += 1
            if rate_limited > rate_limit_retries:
                raise JudgeError(f"{what}: still rate-limited after {rate_limit_retries} waits") from error
            time.sleep(rate_limit_sleep)


def summarize_mmvet(
    samples: Mapping[str, Mapping[str, Any]], grades: Mapping[str, Mapping[str, Any]], num_runs: int = 1
) -> dict[str, float]:
    """mm-vet_evaluator.py's `export_result`, as unrounded fractions.

    For each run, a capability's score is the sum of the scores of the samples having it divided by the number of
    samples having it (counted over all `samples`), and `total` is the sum of all scores over the number of samples.
    Reported: the mean over runs of each (`capability_<cap>`, `total`; the official prints 100 x rounded to one
    decimal), `total_std` (the population standard deviation of the per-run totals) and, per capability
    integration (set of capabilities of a sample, names joined in sorted order), `integration_<name>`.
    """
    counts = Counter()
    integration_counts = Counter()
    for sample in samples.values():
        capabilities = sorted(set(sample["capability"]))
        counts.update(capabilities)
        integration_counts["_".join(capabilities)] += 1
    sums = {capability: [0.0] * num_runs for capability in counts}
    integration_sums = {name: [0.0] * num_runs for name in integration_counts}
    totals = [0.0] * num_runs
    for sample_id, sample in samples.items():
        if sample_id not in grades:
            continue
        capabilities = sorted(set(sample["capability"]))
        for run in range(num_runs):
            score = float(grades[sample_id]["score"][run])
            for capability in capabilities:
                sums[capability][run] += score
            integration_sums["_".join(capabilities)][run] += score
            totals[run] += score
    num_samples = len(samples)
    per_run_totals = [total / num_samples for total in totals] if num_samples else [0.0] * num_runs
    metrics = {"total": sum(per_run_totals) / num_runs, "total_std": statistics.pstdev(per_run_totals)}
    for capability, runs in sorted(sums.items(), key=lambda item: -counts[item[0]]):
        metrics[f"capability_{capability}"] = sum(run / counts[capability] for run in runs) / num_runs
    for name, runs in sorted(integration_sums.items(), key=lambda item: -integration_counts[item[0]]):
        metrics[f"integration_{name}"] = sum(run / integration_counts[name] for run in runs) / num_runs
    return metrics


def grade_mmvet(
    samples: Mapping[str, Mapping[str, Any]],
    answers: Mapping[str, str],
    *,
    url: str,
    model: str = MMVET_JUDGE,
    api_key_env: str | None = "OPENAI_API_KEY",
    num_runs: int = 1,
    timeout: float = 120.0,
    max_retries: int = 2,
    retry_sleep: float = 1.0,
    rate_limit_sleep: float = 30.0,
    rate_limit_retries: int = 20,
    cached_grades: Mapping[str, Mapping[str, Any]] | None = None,
    on_grade: Callable[[str, dict], None] | None = None,
) -> dict[str, Any]:
    """Grades every MM-Vet sample with the judge and aggregates as mm-vet_evaluator.py does.

    Args:
        samples: MM-Vet's `mm-vet.json` (sample id such as "v1_0" -> `question`, `answer`, `capability`, ...).
        answers: sample id -> the model's answer (what LLaVA's `scripts/convert_mmvet_for_eval.py` writes: the answer
            of `question_id` q under the key f"v1_{q}").
        url: the judge's OpenAI-compatible API base (required: nothing is sent without it).
        model: the judge model (the official default is "gpt-4-0613").
        api_key_env: the environment variable holding the API key (None or unset: no key sent).
        num_runs: grading runs per sample (official default 1; the MM-Vet paper uses 5).
        timeout: seconds per request.
        max_retries, retry_sleep: retries of a request that failed with a network error or HTTP error other than 429.
        rate_limit_sleep, rate_limit_retries: the wait after an HTTP 429 (official: 30 s), and how many per sample.
        cached_grades: the `reviews` of an earlier result; runs already graded there are not sent again.
        on_grade: called as `on_grade(sample_id, grade)` after each new grading (to save progress).

    Returns:
        `{"metrics": summarize_mmvet(...), "per_question": {sample_id: mean score over runs}, "reviews": {sample_id:
        {"model": [...], "content": [...], "score": [...]}}, "notes": [...]}` (the official grade-file records).
    """
    if not url:
        raise ValueError("grade_mmvet needs url=<the judge's OpenAI-compatible API base>; nothing was sent.")
    if num_runs < 1:
        raise ValueError(f"num_runs={num_runs!r}: grade at least once (MM-Vet's paper uses 5).")
    missing = [sample_id for sample_id in samples if sample_id not in answers]
    if missing:
        raise ValueError(
            f"answers has no prediction for {len(missing)} MM-Vet samples (first: {missing[:3]}); the keys are the "
            "sample ids of mm-vet.json, e.g. 'v1_0'."
        )
    api_key = _api_key(api_key_env)

    def send(messages, temperature):
        return _with_retries(
            lambda: chat_completion(
                url, model, messages, api_key, temperature=temperature, max_tokens=MMVET_MAX_TOKENS, timeout=timeout
            ),
            "MM-Vet grading request",
            max_retries,
            retry_sleep,
            passthrough=(JudgeRateLimitError,),
        )

    # Each sample's grades so far (the cached runs first); run `run` is asked only where it has no grade yet.
    grades: dict[str, dict[str, list]] = {
        sample_id: {
            key: list((cached_grades or {}).get(sample_id, {}).get(key, [])) for key in ("model", "content", "score")
        }
        for sample_id in samples
    }
    notes = []
    for run in range(num_runs):
        for sample_id, sample in samples.items():
            grade = grades[sample_id]
            if len(grade["score"]) > run:
                continue
            prediction = answers[sample_id]
            score, content, judge_name, gave_up = _grade_mmvet_sample(
                mmvet_grading_question(sample["question"], sample["answer"], prediction),
                mmvet_grading_question(sample["question"], sample["answer"], prediction, retry=True),
                send,
                rate_limit_retries,
                rate_limit_sleep,
                f"MM-Vet sample {sample_id!r}",
            )
            if gave_up:
                notes.append(f"{sample_id} run {run}: no readable score in {MMVET_MAX_TRIES} replies; scored 0.0")
            grade["model"].append(judge_name)
            grade["content"].append(content)
            grade["score"].append(score)
            if on_grade is not None:
                on_grade(sample_id, grade)
    per_question = {sample_id: sum(grade["score"][:num_runs]) / num_runs for sample_id, grade in grades.items()}
    return {
        "metrics": summarize_mmvet(samples, grades, num_runs),
        "per_question": per_question,
        "reviews": grades,
        "notes": notes,
    }
