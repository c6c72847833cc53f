"""Batched greedy answering of benchmark questions into LLaVA-format answers files (`python -m recipes.eval answer`).

Each question's prompt is rendered by the processor's chat template from exactly the user turn LLaVA's answering
script builds (conv mode v1: `SYSTEM USER: <image>\n{text} ASSISTANT:`), prompts are batched with left padding and
answered greedily (`do_sample=False`, LLaVA's `--temperature 0`), and each answer is decoded as LLaVA decodes it
(`skip_special_tokens=True`, stripped). One flush per batch: a killed run loses at most one batch, and a rerun on the
same file answers only what is missing (a torn last line is dropped). A missing or unreadable image skips its
question, counted by reason in the final table and in `<answers>.skipped.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from recipes.eval.common import (
    CONV_MODES,
    Benchmark,
    Question,
    atomic_write_text,
    check_model_id,
    key_text,
    read_answers,
    read_skipped,
    show_key,
    skipped_file,
    write_json,
)

logger = logging.getLogger(__name__)


def model_id_from_path(name_or_path: str) -> str:
    """The `model_id` LLaVA writes: the last path component (`<parent>_checkpoint-N` for a checkpoint folder)."""
    parts = os.fspath(name_or_path).strip("/").split("/")
    if len(parts) > 1 and parts[-1].startswith("checkpoint-"):
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


def check_conv_mode(conv_mode: str) -> None:
    if conv_mode not in CONV_MODES:
        raise ValueError(
            f"--conv-mode {conv_mode!r} is not implemented: SQ-LLaVA and LLaVA-1.5 are evaluated in the Vicuna-v1 "
            f"format, conv mode 'v1' (LLaVA's alias 'vicuna_v1' is the same template). Use --conv-mode v1."
        )


def build_prompt(processor, question: Question, system_prompt: str | None = None) -> str:
    """The full prompt of `question` through the processor's chat template (the single source of the format).

    The user turn is `"<image>\\n" + question.text` exactly as LLaVA builds `qs` (no stripping, so every byte of
    LLaVA's question files reaches the model), or `question.text` for a text-only question. In conv mode v1 this
    renders `SYSTEM USER: <image>\\n{text} ASSISTANT:`.
    """
    image_token = getattr(processor, "image_token", "<image>")
    content = (image_token + "\n" + question.text) if question.image is not None else question.text
    kwargs: dict[str, Any] = {"add_generation_prompt": True, "tokenize": False}
    if system_prompt is not None:
        kwargs["system_prompt"] = system_prompt
    return processor.apply_chat_template([{"role": "user", "content": content}], **kwargs)


def resolve_image_path(image_folder: str, relative: str) -> tuple[str | None, str | None]:
    """`(path, None)` for an image inside `image_folder`, or `(None, reason)`.

    A path from a question file is untrusted: `../` or an absolute path that leaves the image folder is refused
    (reason `outside_image_folder`), as is anything that is not a file (`missing`).
    """
    folder = os.path.realpath(image_folder)
    path = os.path.realpath(os.path.join(folder, relative))
    if os.path.commonpath([folder, path]) != folder:
        return None, "outside_image_folder"
    if not os.path.isfile(path):
        return None, "missing"
    return path, None


def load_question_image(question: Question, image_folder: str | None):
    """`(PIL image, None)` or `(None, reason)` for the image of `question` (reasons: `SKIP_REASONS`).

    Decoded as LLaVA's answering scripts decode (`Image.open(...)`, then RGB through `process_images`): with the
    processor's `load_image_rgb`, i.e. PIL's `.convert("RGB")`, which drops transparency instead of compositing on
    white (ScienceQA's PNGs have alpha), so the model sees the pixels LLaVA's scripts gave it.
    """
    import base64
    import binascii

    from processing.processing_sqllava import load_image_rgb

    image = question.image
    try:
        if isinstance(image, bytes):
            if not image:
                return None, "missing"
            try:
                data = base64.b64decode(image, validate=True)
            except (binascii.Error, ValueError):
                data = image  # raw encoded bytes
            # The processor's decoder checks the size limits on the header before decoding.
            return load_image_rgb(data, "the embedded image"), None
        if image_folder is None:
            raise ValueError(f"{question.source}: the question has an image but the benchmark has no image folder.")
        path, reason = resolve_image_path(image_folder, image)
        if reason:
            return None, reason
        return load_image_rgb(path), None
    except ValueError as error:
        logger.warning("Skipping question %s: %s", show_key(question.key), error)
        return None, "unreadable"


def _batches(questions: Sequence[Question], batch_size: int) -> Iterable[list[Question]]:
    for start in range(0, len(questions), batch_size):
        yield list(questions[start : start + batch_size])


def generate_answers(
    model,
    processor,
    prompts: list[str],
    images: list,
    *,
    max_new_tokens: int,
    llava_cleanup: bool = True,
) -> tuple[list[str], int]:
    """Greedy answers to a batch of prompts (left padding), and the number of new tokens generated.

    Decoding follows LLaVA: the new tokens up to the first EOS, `skip_special_tokens=True`, stripped. With
    `llava_cleanup=False` the processor's `post_process_generation` cleans them instead (role tags cut).
    """
    import torch

    tokenizer = processor.tokenizer
    inputs = processor(text=prompts, images=images or None, padding=True, padding_side="left", return_tensors="pt")
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
    new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
    texts, generated = [], 0
    for ids in new_tokens:
        if tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(tokenizer.eos_token_id)]
        ids = [i for i in ids if i != tokenizer.pad_token_id]
        generated += len(ids)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        texts.append(text.strip() if llava_cleanup else processor.post_process_generation(text))
    return texts, generated


@dataclasses.dataclass
class AnswerReport:
    benchmark: str
    answers_file: str
    num_questions: int
    num_generated: int
    num_resumed: int
    skipped: dict[str, int]
    seconds: float
    generated_tokens: int

    @property
    def questions_per_second(self) -> float:
        return self.num_generated / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "questions_per_second": self.questions_per_second}


def answer_questions(
    model,
    processor,
    benchmark: Benchmark,
    questions: Sequence[Question],
    answers_file: str,
    *,
    all_questions: Sequence[Question] | None = None,
    image_folder: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    model_id: str = "model",
    system_prompt: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> AnswerReport:
    """Answer every question of `questions` that `answers_file` does not hold yet, appending LLaVA-format rows.

    Args:
        model, processor: an SQ-LLaVA model and its processor (see `recipes.loading.load_model_and_processor`).
        benchmark: the benchmark the questions come from (answer keys, cleanup, default budget).
        questions: what to answer (a chunk or a limited subset of `all_questions`).
        answers_file: jsonl to append to; its answers are validated against `all_questions`, rows written by another
            `model_id` are refused unless `force`, and a torn last line (a killed run) is dropped with a warning.
        all_questions: every question of the benchmark split (defaults to `questions`): the file may hold answers
            to any of them, and is rewritten in their order at the end so that LLaVA's own scripts (which pair
            answers and labels by position) read it as they read LLaVA's.
        image_folder: the folder image paths are relative to.
        batch_size: prompts per `generate` call.
        max_new_tokens: defaults to the benchmark's (LLaVA's script's) budget.
        model_id: written in every row (LLaVA: the model folder's name).
        system_prompt: replaces the chat template's default system prompt (LLaVA-1.5's); only for the synthetic
            `shapes` data, the LLaVA benchmarks use conv mode v1 unchanged.
        force: accept an answers file written by another `model_id`.
        progress: show a tqdm progress bar.

    Returns:
        [`AnswerReport`]: counts (generated now, resumed, skipped images by reason), seconds, tokens generated.
    """
    from tqdm.auto import tqdm

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size {batch_size!r} must be a positive integer.")
    max_new_tokens = benchmark.max_new_tokens if max_new_tokens is None else max_new_tokens
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {max_new_tokens!r} must be a positive integer.")
    all_questions = list(questions if all_questions is None else all_questions)
    known = Counter(q.key for q in all_questions)
    answers_file = os.fspath(answers_file)
    os.makedirs(os.path.dirname(os.path.abspath(answers_file)), exist_ok=True)

    existing = read_answers(answers_file, benchmark, known, resume=True)
    check_model_id(existing, model_id, answers_file, force)
    if existing.torn_tail is not None:
        path, offset = existing.torn_tail
        logger.warning("Dropping the half-written last line of %s (a killed run); its question is asked again.", path)
        with open(path, "r+b") as f:
            f.truncate(offset)
    if existing.missing_newline:
        with open(existing.missing_newline, "ab") as f:
            f.write(b"\n")
    done = set(existing.rows)
    seen: set = set()
    todo = []
    for q in questions:  # a key LLaVA's file repeats (TextVQA) is asked once
        if q.key not in done and q.key not in seen:
            todo.append(q)
            seen.add(q.key)
    num_resumed = len({q.key for q in questions} & done)
    if num_resumed:
        logger.info("Resuming %s: %d of %d questions already answered.", answers_file, num_resumed, len(seen | done))

    skipped_path = skipped_file(answers_file)
    skipped_before = read_skipped(answers_file)
    skipped_now: dict[str, str] = {}
    model.eval()
    start, generated_tokens, num_generated = time.perf_counter(), 0, 0
    with (
        open(answers_file, "a", encoding="utf-8") as out,
        tqdm(
            total=len(todo) + num_resumed, initial=num_resumed, desc=benchmark.name, unit="q", disable=not progress
        ) as bar,
    ):
        for batch in _batches(todo, batch_size):
            ready, images = [], []
            for question in batch:
                if question.image is None:
                    ready.append(question)
                    continue
                image, reason = load_question_image(question, image_folder)
                if image is None:
                    skipped_now[key_text(question.key)] = reason
                    continue
                ready.append(question)
                images.append(image)
            if ready:
                prompts = [build_prompt(processor, q, system_prompt) for q in ready]
                texts, tokens = generate_answers(
                    model,
                    processor,
                    prompts,
                    images,
                    max_new_tokens=max_new_tokens,
                    llava_cleanup=benchmark.llava_cleanup,
                )
                generated_tokens += tokens
                for question, text in zip(ready, texts):
                    row = _answer_row(question, text, model_id)
                    out.write(json.dumps(row) + "\n")
                num_generated += len(ready)
                # One flush per batch: a killed run loses at most the batch being generated.
                out.flush()
            bar.update(len(batch))
    seconds = time.perf_counter() - start

    attempted = {key_text(q.key) for q in todo}
    skipped_all = {k: v for k, v in skipped_before.items() if k not in attempted}
    skipped_all.update(skipped_now)
    if skipped_all:
        write_json(
            skipped_path,
            {
                "benchmark": benchmark.name,
                "model_id": model_id,
                "counts": dict(Counter(skipped_all.values())),
                "skipped": skipped_all,
            },
        )
    elif os.path.isfile(skipped_path):
        os.remove(skipped_path)
    _rewrite_in_order(answers_file, benchmark, all_questions, known)
    if skipped_now:
        logger.warning(
            "%d question(s) skipped for their image (%s); listed in %s. Fix the images and rerun to answer them.",
            len(skipped_now),
            dict(Counter(skipped_now.values())),
            skipped_path,
        )
    return AnswerReport(
        benchmark=benchmark.name,
        answers_file=answers_file,
        num_questions=len({q.key for q in questions}),
        num_generated=num_generated,
        num_resumed=num_resumed,
        skipped=dict(Counter(skipped_now.values())),
        seconds=seconds,
        generated_tokens=generated_tokens,
    )


def _answer_row(question: Question, text: str, model_id: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name, value in question.row.items():
        row[name] = value
        if name == "prompt":
            row["text"] = text
    if "text" not in row:
        row["text"] = text
    row["answer_id"] = uuid.uuid4().hex
    row["model_id"] = model_id
    row["metadata"] = {}
    return row


def _rewrite_in_order(answers_file: str, benchmark: Benchmark, all_questions: Sequence[Question], known) -> None:
    """Rewrite the answers file in question order (atomically) when resuming left it out of order."""
    if not os.path.isfile(answers_file):
        return
    with open(answers_file, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    order = {}
    for position, q in enumerate(all_questions):
        order.setdefault(q.key, position)
    keyed = [(order[benchmark.answer_key(json.loads(line), answers_file)], i, line) for i, line in enumerate(lines)]
    ordered = sorted(keyed)
    if [i for _, i, _ in ordered] != list(range(len(lines))):
        atomic_write_text(answers_file, "".join(line for _, _, line in ordered))


def format_answer_table(report: AnswerReport) -> str:
    skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(report.skipped.items())) or "none"
    return "\n".join(
        [
            f"{report.benchmark}: {report.answers_file}",
            (
                f"  questions {report.num_questions}, answered now {report.num_generated}, "
                f"already answered {report.num_resumed}"
            ),
            f"  skipped images: {skipped}",
            (
                f"  {report.seconds:.1f} s, {report.questions_per_second:.2f} questions/s, "
                f"{report.generated_tokens} tokens generated"
            ),
        ]
    )


def answer_benchmark(
    model,
    processor,
    benchmark: str | Benchmark,
    eval_root: str,
    answers_file: str,
    *,
    split: str | None = None,
    question_file: str | None = None,
    image_folder: str | None = None,
    num_chunks: int = 1,
    chunk_idx: int = 0,
    limit: int | None = None,
    all_rounds: bool = True,
    conv_mode: str = "v1",
    **kwargs,
) -> AnswerReport:
    """Answer one benchmark of an evaluation root (what `python -m recipes.eval answer` runs).

    Args:
        model, processor: the loaded model and processor.
        benchmark: a benchmark name (`recipes.eval.common.all_benchmarks()`) or object.
        eval_root: the folder laid out as LLaVA's `playground/data/eval`.
        answers_file: the jsonl to append to (resumed).
        split: defaults to the benchmark's (the split the papers report).
        question_file, image_folder: replace the benchmark's files (same formats).
        num_chunks, chunk_idx: answer one of `num_chunks` contiguous chunks (one process per GPU, as LLaVA's
            `--num-chunks/--chunk-idx`; write each chunk to its own file and `score` them together).
        limit: answer only the first `limit` questions (MMBench: TSV rows), e.g. for a quick check.
        all_rounds: MMBench: ask every rotation of the options (LLaVA's `--all-rounds`).
        conv_mode: the prompt format; only LLaVA's `v1` (alias `vicuna_v1`) exists.
        kwargs: [`answer_questions`] options (`batch_size`, `max_new_tokens`, `model_id`, `force`, ...).

    >>> from recipes.eval.answering import answer_benchmark
    >>> report = answer_benchmark(model, processor, "pope", "playground/data/eval", "answers/pope.jsonl",
    ...                           batch_size=16, model_id="sqllava-7b")  # doctest: +SKIP
    """
    from recipes.eval.common import chunk_questions, get_benchmark, limit_questions

    check_conv_mode(conv_mode)
    benchmark = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    split = benchmark.resolve_split(split)
    all_questions = benchmark.load_questions(eval_root, split, question_file=question_file, all_rounds=all_rounds)
    questions = limit_questions(chunk_questions(all_questions, num_chunks, chunk_idx), limit)
    folder = image_folder or benchmark.image_folder(eval_root, split)
    uses_folder = any(q.image is not None and not isinstance(q.image, bytes) for q in questions)
    if folder is not None and uses_folder and not os.path.isdir(folder):
        raise ValueError(
            f"Image folder of {benchmark.name} {split} not found: expected {folder!r} (or pass --image-folder)."
        )
    return answer_questions(
        model,
        processor,
        benchmark,
        questions,
        answers_file,
        all_questions=all_questions,
        image_folder=folder,
        **kwargs,
    )
