"""Benchmark evaluation of an SQ-LLaVA checkpoint on question files in the LLaVA evaluation format.

Each line of the question file is `{"question_id", "image", "text"}` plus, optionally, the ground truth (`answers`:
the human answers of VQAv2/TextVQA, `answer` or `label`). Every question is asked single-turn with the LLaVA-1.5
conventions: the LLaVA system prompt, `<image>\\n` + question, the short-answer suffix "Answer the question using a
single word or phrase." where the benchmark uses it, greedy decoding. Answers are appended to a jsonl file in the
format of LLaVA's `model_vqa_loader.py` (`question_id`, `prompt`, `text`, `answer_id`, `model_id`, `metadata`), so
the official LLaVA / SQ-LLaVA conversion scripts (`convert_vqav2_for_submission.py`, `convert_gqa_for_eval.py`, ...)
read it unchanged. A rerun skips the questions already answered, so an interrupted run loses at most one batch.

When the questions carry ground truth, the answers are scored with the metrics of `recipes/metrics/` (loaded by path
with `evaluate.load`, no network).

Command line (the synthetic shapes data of `recipes/synthetic.py`):

    python recipes/evaluate.py --model outputs/tiny-finetune --question-file data/shapes/eval.jsonl \\
        --image-folder data/shapes --answers-file outputs/eval/shapes-answers.jsonl --benchmark shapes

A real benchmark, with LLaVA's question files (their `text` already ends with the short-answer suffix, which is then
not added twice):

    python recipes/evaluate.py --model <user>/sq-llava-7b --question-file llava_gqa_testdev_balanced.jsonl \\
        --image-folder gqa/images --answers-file answers/gqa.jsonl --benchmark gqa --batch-size 16 --dtype bfloat16

>>> from recipes.evaluate import evaluate_model, load_model_and_processor
>>> model, processor = load_model_and_processor("outputs/tiny-finetune")  # doctest: +SKIP
>>> result = evaluate_model(model, processor, "data/shapes/eval.jsonl", "answers.jsonl", image_folder="data/shapes",
...                         short_answer=True, metric="exact_match")  # doctest: +SKIP
>>> result["scores"]  # doctest: +SKIP
{'exact_match': 0.41}
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))
logger = logging.getLogger(__name__)

SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
# LLaVA's `--single-pred-prompt` for ScienceQA / MMBench.
MULTIPLE_CHOICE_SUFFIX = "Answer with the option's letter from the given choices directly."
METRICS = ("vqa_accuracy", "pope", "exact_match", "multiple_choice")
METRICS_DIR = os.path.join(_SCRIPT_DIR, "metrics")

# Benchmark presets: the suffix LLaVA-1.5's evaluation scripts use, the metric and its protocol options.
BENCHMARKS: dict[str, dict[str, Any]] = {
    "vqav2": {
        "answer_suffix": SHORT_ANSWER_SUFFIX,
        "metric": "vqa_accuracy",
        "metric_kwargs": {"answer_processing": "llava_vqav2"},
    },
    "textvqa": {
        "answer_suffix": SHORT_ANSWER_SUFFIX,
        "metric": "vqa_accuracy",
        "metric_kwargs": {"answer_processing": "textvqa"},
    },
    "vizwiz": {
        "answer_suffix": SHORT_ANSWER_SUFFIX,
        "metric": "vqa_accuracy",
        "metric_kwargs": {"answer_processing": "llava_vqav2"},
    },
    "gqa": {"answer_suffix": SHORT_ANSWER_SUFFIX, "metric": "exact_match", "metric_kwargs": {"normalization": "gqa"}},
    "pope": {"answer_suffix": SHORT_ANSWER_SUFFIX, "metric": "pope", "metric_kwargs": {}},
    "scienceqa": {"answer_suffix": MULTIPLE_CHOICE_SUFFIX, "metric": "multiple_choice", "metric_kwargs": {}},
    "mmbench": {
        "answer_suffix": MULTIPLE_CHOICE_SUFFIX,
        "metric": "multiple_choice",
        "metric_kwargs": {"options": "ABCD"},
    },
    # The synthetic shapes data: short answers like "Top left." against normalised references like "top left".
    "shapes": {
        # The synthetic training questions carry no suffix (recipes/synthetic.py), so neither does their eval.
        "answer_suffix": None,
        "metric": "exact_match",
        "metric_kwargs": {"normalization": "lenient"},
    },
}


# ----------------------------------------------------------------------------------------------------------------------
# Question and answer files
# ----------------------------------------------------------------------------------------------------------------------


def load_questions(question_file: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads a LLaVA evaluation question file (`.jsonl`, one question per line, or a `.json` list).

    Raises:
        ValueError: naming the file and line when a line is not JSON, lacks `question_id`/`text`, or repeats a
            `question_id` (answers are matched to questions by id, so ids must be unique).
    """
    question_file = os.fspath(question_file)
    if not os.path.isfile(question_file):
        raise ValueError(f"`question_file` {question_file!r} does not exist.")
    with open(question_file, encoding="utf-8") as f:
        content = f.read()
    if question_file.endswith(".json") and content.lstrip().startswith("["):
        rows = json.loads(content)
        numbered = list(enumerate(rows, start=1))
    else:
        numbered = []
        for line_number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((line_number, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{question_file}:{line_number} is not valid JSON ({e}).") from None
    return validate_questions([row for _, row in numbered], source=question_file)


def validate_questions(questions: Iterable[Mapping[str, Any]], source: str = "questions") -> list[dict[str, Any]]:
    """Checks that every question has a unique `question_id` and a `text`; returns them as a list of dicts."""
    out, seen = [], set()
    for position, question in enumerate(questions):
        if not isinstance(question, Mapping):
            raise TypeError(f"{source}[{position}] is a {type(question).__name__}; each question must be a dict.")
        for key in ("question_id", "text"):
            if key not in question:
                raise ValueError(
                    f"{source}[{position}] has no {key!r} (keys: {sorted(question)}); LLaVA question files need "
                    "'question_id', 'text' and, for image questions, 'image'."
                )
        qid = question["question_id"]
        if qid in seen:
            raise ValueError(
                f"{source}: question_id {qid!r} appears twice; ids must be unique because answers are matched (and "
                "resumed) by id."
            )
        seen.add(qid)
        out.append(dict(question))
    return out


def read_answers(answers_file: str | os.PathLike) -> dict[Any, dict[str, Any]]:
    """Answers already written, by `question_id`. A torn last line (a run killed mid-write) is dropped from the file."""
    answers_file = os.fspath(answers_file)
    if not os.path.isfile(answers_file):
        return {}
    answers, good_bytes = {}, 0
    with open(answers_file, "rb") as f:
        lines = f.readlines()
    for index, raw in enumerate(lines):
        try:
            row = json.loads(raw.decode("utf-8"))
            if not raw.endswith(b"\n"):
                raise ValueError("no newline")
        except (UnicodeDecodeError, ValueError):
            if index == len(lines) - 1:
                logger.warning("Dropping the incomplete last line of %s (interrupted write).", answers_file)
                with open(answers_file, "r+b") as f:
                    f.truncate(good_bytes)
                break
            raise ValueError(
                f"{answers_file}:{index + 1} is not valid JSON; the answers file is corrupt. Move it away to restart."
            ) from None
        answers[row["question_id"]] = row
        good_bytes += len(raw)
    return answers


def reference_of(question: Mapping[str, Any], metric: str) -> Any:
    """The ground truth of a question in the form `metric` expects, or None when the question has none.

    `answers` may be a list of strings or of VQAv2 annotation dicts (`{"answer": ...}`); `answer` and `label` are
    single references.
    """
    answers = question.get("answers")
    if isinstance(answers, list) and answers:
        answers = [a["answer"] if isinstance(a, Mapping) else a for a in answers]
    single = next((question[key] for key in ("answer", "label", "gt_answer") if question.get(key) is not None), None)
    if metric == "vqa_accuracy":
        if isinstance(answers, list) and answers:
            return [str(a) for a in answers]
        return None if single is None else [str(single)]
    if single is None and isinstance(answers, list) and answers:
        single = answers[0]
    return None if single is None else str(single)


def score_answers(
    questions: Sequence[Mapping[str, Any]],
    answers: Mapping[Any, Mapping[str, Any]],
    metric: str,
    metric_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Scores the answered questions that have ground truth with `recipes/metrics/<metric>`.

    Args:
        questions: the question dicts (with their ground truth).
        answers: the written answers by `question_id` (see `read_answers`).
        metric: one of `METRICS`.
        metric_kwargs: extra arguments of the metric's `compute` (e.g. `{"normalization": "lenient"}`).

    Returns:
        The metric's result plus `num_scored` (questions with an answer and ground truth).
    """
    import evaluate

    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not supported; use one of {METRICS}.")
    predictions, references, choices = [], [], []
    for question in questions:
        qid = question["question_id"]
        reference = reference_of(question, metric)
        if reference is None or qid not in answers:
            continue
        predictions.append(answers[qid]["text"])
        references.append(reference)
        choices.append(question.get("choices"))
    if not predictions:
        raise ValueError(
            f"No answered question has ground truth for metric {metric!r} (looked for 'answers', 'answer', 'label'); "
            "drop --metric or use a question file with answers."
        )
    kwargs = dict(metric_kwargs or {})
    if metric == "multiple_choice" and "choices" not in kwargs and all(c is not None for c in choices):
        kwargs["choices"] = choices
    module = evaluate.load(os.path.join(METRICS_DIR, metric))
    result = module.compute(predictions=predictions, references=references, **kwargs)
    return {**result, "num_scored": len(predictions)}


# ----------------------------------------------------------------------------------------------------------------------
# Prompting and generation
# ----------------------------------------------------------------------------------------------------------------------


def build_prompt(
    processor,
    question: str,
    *,
    has_image: bool = True,
    answer_suffix: str | None = None,
    system_prompt: str | None = None,
) -> str:
    """The LLaVA-1.5 single-turn prompt for `question`, ending with the `ASSISTANT:` generation prompt.

    `<image>\\n` goes in front of the question (a `<image>` already in the text is moved there, as LLaVA's loader
    does); `answer_suffix` is appended on a new line unless the question already ends with it (LLaVA's question files
    for VQAv2, GQA, POPE, TextVQA already carry it). Without `system_prompt` the chat template's default applies,
    which is the LLaVA-1.5 system prompt for a plain question.
    """
    text = question.replace("<image>", "").strip() if has_image else question.strip()
    if answer_suffix and not text.endswith(answer_suffix):
        text = f"{text}\n{answer_suffix}"
    messages = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": ("<image>\n" if has_image else "") + text})
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def clean_answer(processor, text: str) -> str:
    """A generated answer without special tokens, role tags or surrounding whitespace."""
    for name in ("post_process_generation", "clean_generated_text", "post_process_text"):
        helper = getattr(processor, name, None)
        if callable(helper):
            return helper(text)
    return text.split("</s>")[0].strip()


def _batches(questions: Sequence[dict[str, Any]], batch_size: int) -> Iterable[list[dict[str, Any]]]:
    """Consecutive batches; a batch never mixes image and text-only questions (the processor takes one or the other)."""
    batch: list[dict[str, Any]] = []
    for question in questions:
        if batch and (len(batch) == batch_size or bool(batch[0].get("image")) != bool(question.get("image"))):
            yield batch
            batch = []
        batch.append(question)
    if batch:
        yield batch


def _generate_batch(model, processor, prompts: list[str], images: list | None, max_new_tokens: int) -> list[str]:
    import torch

    tokenizer = processor.tokenizer
    padding_side = tokenizer.padding_side
    # Decoder-only batched generation needs left padding: every prompt must end right where generation starts.
    tokenizer.padding_side = "left"
    try:
        kwargs: dict[str, Any] = {"text": prompts, "return_tensors": "pt", "padding": True}
        if images is not None:
            kwargs["images"] = images
        inputs = processor(**kwargs)
    finally:
        tokenizer.padding_side = padding_side
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [clean_answer(processor, text) for text in texts]


def evaluate_model(
    model,
    processor,
    questions: str | os.PathLike | Sequence[Mapping[str, Any]],
    answers_file: str | os.PathLike,
    *,
    image_folder: str | os.PathLike | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 16,
    short_answer: bool = False,
    answer_suffix: str | None = None,
    system_prompt: str | None = None,
    metric: str | None = None,
    metric_kwargs: Mapping[str, Any] | None = None,
    model_id: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Answers every question not yet in `answers_file` (batched greedy decoding), then scores all answers.

    Args:
        model: an SQ-LLaVA model (any image-text-to-text model whose processor takes `<image>` prompts).
        processor: its processor (the chat template renders the LLaVA-1.5 prompt).
        questions: a question file (LLaVA `.jsonl`) or a list of question dicts.
        answers_file: jsonl to append answers to; questions already answered there are skipped (resume).
        image_folder: folder the questions' `image` paths are relative to; defaults to the question file's folder.
        batch_size: prompts per `generate` call.
        max_new_tokens: generation budget per answer (LLaVA uses 128 for short answers; 16 suffices for them).
        short_answer: append "Answer the question using a single word or phrase." to each question.
        answer_suffix: another suffix instead (e.g. `MULTIPLE_CHOICE_SUFFIX`); overrides `short_answer`.
        system_prompt: replaces the chat template's default (LLaVA-1.5) system prompt.
        metric: score with `recipes/metrics/<metric>` (one of `METRICS`); None skips scoring.
        metric_kwargs: extra arguments of the metric's `compute`.
        model_id: the `model_id` written with each answer; defaults to the model's `name_or_path` basename.
        progress: show a tqdm progress bar.

    Returns:
        `dict` with `num_questions`, `num_generated` (this run), `num_resumed` (answered before), `seconds`,
        `images_per_second`, `answers_file`, and `scores` (the metric's result, None without `metric`).
    """
    from tqdm.auto import tqdm

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a positive integer.")
    if metric is not None and metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not supported; use one of {METRICS} or None.")
    from recipes.data import load_image

    if isinstance(questions, (str, os.PathLike)):
        if image_folder is None:
            image_folder = os.path.dirname(os.path.abspath(os.fspath(questions)))
        questions = load_questions(questions)
    else:
        questions = validate_questions(questions)
    image_folder = os.fspath(image_folder) if image_folder is not None else os.getcwd()
    suffix = answer_suffix if answer_suffix is not None else (SHORT_ANSWER_SUFFIX if short_answer else None)
    model_id = model_id or os.path.basename(str(getattr(model, "name_or_path", "") or "model").rstrip("/"))

    answers_file = os.fspath(answers_file)
    os.makedirs(os.path.dirname(os.path.abspath(answers_file)), exist_ok=True)
    done = read_answers(answers_file)
    todo = [q for q in questions if q["question_id"] not in done]
    num_resumed = len(questions) - len(todo)
    if num_resumed:
        logger.info("Resuming: %d of %d questions already answered in %s.", num_resumed, len(questions), answers_file)

    model.eval()
    num_images, start = 0, time.perf_counter()
    with (
        open(answers_file, "a", encoding="utf-8") as out,
        tqdm(total=len(questions), initial=num_resumed, desc="evaluate", unit="q", disable=not progress) as bar,
    ):
        for batch in _batches(todo, batch_size):
            has_image = bool(batch[0].get("image"))
            prompts = [
                build_prompt(
                    processor, q["text"], has_image=has_image, answer_suffix=suffix, system_prompt=system_prompt
                )
                for q in batch
            ]
            images = None
            if has_image:
                images = []
                for q in batch:
                    try:
                        images.append(load_image(os.path.join(image_folder, q["image"])))
                    except ValueError as e:
                        raise ValueError(f"question_id {q['question_id']!r}: {e}") from e
            texts = _generate_batch(model, processor, prompts, images, max_new_tokens)
            for question, text in zip(batch, texts):
                row = {
                    "question_id": question["question_id"],
                    "prompt": question["text"],
                    "text": text,
                    "answer_id": uuid.uuid4().hex,
                    "model_id": model_id,
                    "metadata": {},
                }
                out.write(json.dumps(row) + "\n")
                done[question["question_id"]] = row
            # One flush per batch: an interruption loses at most the batch being generated.
            out.flush()
            num_images += len(batch) if has_image else 0
            bar.update(len(batch))
    seconds = time.perf_counter() - start
    images_per_second = num_images / seconds if num_images and seconds > 0 else 0.0
    logger.info("Generated %d answers in %.1f s (%.2f images/s).", len(todo), seconds, images_per_second)

    scores = None
    if metric is not None:
        scores = score_answers(questions, done, metric, metric_kwargs)
    return {
        "num_questions": len(questions),
        "num_generated": len(todo),
        "num_resumed": num_resumed,
        "seconds": seconds,
        "images_per_second": images_per_second,
        "answers_file": answers_file,
        "scores": scores,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def load_model_and_processor(model_name_or_path: str, **kwargs):
    """`recipes.loading.load_model_and_processor`: remote code runs only with `trust_remote_code=True`."""
    from recipes.loading import load_model_and_processor as load

    return load(model_name_or_path, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------


def chunk(questions: Sequence[dict[str, Any]], num_chunks: int, chunk_idx: int) -> list[dict[str, Any]]:
    """The `chunk_idx`-th of `num_chunks` contiguous slices (LLaVA's `--num-chunks/--chunk-idx`, one per GPU)."""
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"chunk_idx={chunk_idx} must be in [0, num_chunks={num_chunks}).")
    size = -(-len(questions) // num_chunks)
    return list(questions[chunk_idx * size : (chunk_idx + 1) * size])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--model", required=True, help="Hub id or folder of the model (and its processor).")
    parser.add_argument("--question-file", required=True, help="LLaVA question jsonl.")
    parser.add_argument("--image-folder", default=None, help="Folder of the images (default: the question file's).")
    parser.add_argument("--answers-file", required=True, help="Answers jsonl (appended to; answered ids are skipped).")
    parser.add_argument(
        "--benchmark",
        choices=sorted(BENCHMARKS),
        default=None,
        help="Preset: the benchmark's prompt suffix, metric and metric options.",
    )
    parser.add_argument("--metric", choices=METRICS, default=None, help="Score with recipes/metrics/<metric>.")
    parser.add_argument(
        "--metric-kwargs",
        type=json.loads,
        default=None,
        help='JSON of extra metric arguments, e.g. \'{"normalization": "lenient"}\'.',
    )
    parser.add_argument("--short-answer", action="store_true", help=f'Append "{SHORT_ANSWER_SUFFIX}"')
    parser.add_argument("--answer-suffix", default=None, help="Another instruction appended to every question.")
    parser.add_argument("--system-prompt", default=None, help="Replace the default LLaVA-1.5 system prompt.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--num-chunks", type=int, default=1, help="Split the questions into chunks (one per GPU).")
    parser.add_argument("--chunk-idx", type=int, default=0, help="Which chunk this process answers.")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--device", default=None, help="Default: cuda when available, else cpu.")
    parser.add_argument("--model-id", default=None, help="The model_id written in the answers (default: basename).")
    parser.add_argument("--results-file", default=None, help="Also write the returned summary (with scores) as JSON.")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    from recipes.loading import add_trust_remote_code_argument

    add_trust_remote_code_argument(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    preset = BENCHMARKS.get(args.benchmark, {}) if args.benchmark else {}
    metric = args.metric or preset.get("metric")
    metric_kwargs = (
        args.metric_kwargs
        if args.metric_kwargs is not None
        else (preset.get("metric_kwargs") if metric == preset.get("metric") else None)
    )
    answer_suffix = args.answer_suffix or (SHORT_ANSWER_SUFFIX if args.short_answer else preset.get("answer_suffix"))

    questions = chunk(load_questions(args.question_file), args.num_chunks, args.chunk_idx)
    image_folder = args.image_folder or os.path.dirname(os.path.abspath(args.question_file))
    model, processor = load_model_and_processor(
        args.model, trust_remote_code=args.trust_remote_code, dtype=args.dtype, device=args.device
    )
    result = evaluate_model(
        model,
        processor,
        questions,
        args.answers_file,
        image_folder=image_folder,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        answer_suffix=answer_suffix,
        system_prompt=args.system_prompt,
        metric=metric,
        metric_kwargs=metric_kwargs,
        model_id=args.model_id or os.path.basename(os.path.normpath(args.model)),
        progress=not args.no_progress,
    )
    print(json.dumps(result, indent=2))
    if args.results_file:
        os.makedirs(os.path.dirname(os.path.abspath(args.results_file)), exist_ok=True)
        with open(args.results_file, "w") as f:
            json.dump(result, f, indent=2)
    return result


def _script_sys_path() -> None:
    """Make `python recipes/evaluate.py` import the real `evaluate` package and `recipes.*`.

    A script's folder goes first on sys.path, and there recipes/evaluate.py shadows the `evaluate` package (imported
    lazily, when scoring). The repository root replaces it; only stdlib modules are imported before this runs.
    """
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _SCRIPT_DIR]
    sys.path.insert(0, os.path.dirname(_SCRIPT_DIR))


if __name__ == "__main__":
    _script_sys_path()
    main()
