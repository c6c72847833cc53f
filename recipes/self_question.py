"""Self-questioning inference: the model describes an image, asks questions about it, and may answer them.

SQ-LLaVA is trained to ask as well as to answer: in stage 2 some user questions become turns of a "virtual user"
(`vuser`) and the model learns to generate them. At inference the authors' recipe (demo/visual_questioning.py and
sqllava/eval/visual_sq.py, conversation mode `v1_sq`) is one conversation under the self-questioning system prompt:
"Can you describe the image in detail?" answered greedily (up to 1024 new tokens, assistant role), then questions
sampled from a `VUSER:` generation prompt with temperature 1.2, top-k 300, top-p 0.95 (up to 300 new tokens). Each
question is sampled independently from the same context (image + description), so they do not condition on each
other; empty and duplicate questions are dropped, counted, and redrawn (up to `max_rounds` rounds). With
`answer=True` the model then answers its own questions (greedy, assistant role, the question kept as the vuser turn
it was trained on; the authors' scripts stop at the questions).

Batch mode turns a folder of images into a new instruction dataset: LLaVA JSON (loads with
`recipes.data.load_llava_json`), or an HF dataset with `images` + `messages` columns saved to disk or pushed to the Hub.
Each result is appended to a JSON Lines progress file as soon as it is made (`<output>.progress.jsonl`), so a killed
run keeps everything done so far and the same command resumes it, skipping the images already done; an unreadable
image is skipped and counted, not fatal; the dataset itself is written at the end, from the progress file.

Command line:

    python recipes/self_question.py --model <user>/sq-llava-7b --images photo.jpg --num-questions 5 --answer
    python recipes/self_question.py --model outputs/tiny-finetune --images data/shapes/images --num-questions 3 \\
        --answer --output outputs/self_questions.json            # or --output-dataset DIR / --push-to-hub user/name

>>> from recipes.self_question import self_question
>>> result = self_question(model, processor, "photo.jpg", num_questions=3, answer=True, seed=0)  # doctest: +SKIP
>>> result.description  # doctest: +SKIP
'A dog running on a beach.'
>>> result.questions[0]  # doctest: +SKIP
{'question': 'What breed is the dog?', 'answer': 'It looks like a golden retriever.'}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

_SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))
logger = logging.getLogger(__name__)

# The authors' description request and budget (demo/visual_questioning.py:38 and :53, sqllava/eval/visual_sq.py:59).
DESCRIBE_PROMPT = "Can you describe the image in detail?"
DESCRIBE_MAX_NEW_TOKENS = 1024
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# A question the model continued past its end ("... color?</s> ASSISTANT: Red.") is cut at the next role tag.
_ROLE_TAG = re.compile(r"\b(?:VUSER|USER|ASSISTANT|SYSTEM)\s*:")


@dataclass
class SelfQuestioningResult:
    """What the model said about one image.

    Args:
        description: the model's description of the image (the context its questions are sampled from).
        questions: `{"question": str, "answer": str | None}` per kept question (`answer` is None unless answering).
        image: the image's path (relative to the image folder in batch mode), when it came from a file.
        num_empty: sampled questions dropped because they were empty after cleaning.
        num_duplicate: sampled questions dropped because they repeated a kept one (case and spacing ignored).
        describe_prompt: the instruction the description answers.
    """

    description: str
    questions: list[dict[str, str | None]] = field(default_factory=list)
    image: str | None = None
    num_empty: int = 0
    num_duplicate: int = 0
    describe_prompt: str = DESCRIBE_PROMPT

    def to_messages(self) -> list[dict[str, str]]:
        """The result as a canonical training conversation (user/assistant turns, `<image>` first).

        The description is the answer to the first turn; answered questions follow as user/assistant turns
        (unanswered questions are left out: a training sample needs the answer).
        """
        messages = [
            {"role": "user", "content": "<image>\n" + self.describe_prompt},
            {"role": "assistant", "content": self.description},
        ]
        for qa in self.questions:
            if qa.get("answer"):
                messages.append({"role": "user", "content": qa["question"]})
                messages.append({"role": "assistant", "content": qa["answer"]})
        return messages

    def to_llava(self, sample_id: str) -> dict[str, Any]:
        """The result as a LLaVA JSON record; unanswered questions are kept under `"questions"`."""
        roles = {"user": "human", "assistant": "gpt"}
        record: dict[str, Any] = {"id": sample_id}
        if self.image is not None:
            record["image"] = self.image
        record["conversations"] = [{"from": roles[m["role"]], "value": m["content"]} for m in self.to_messages()]
        unanswered = [qa["question"] for qa in self.questions if not qa.get("answer")]
        if unanswered:
            record["questions"] = unanswered
        return record


def clean_generated_text(processor, text: str) -> str:
    """A generated question or answer without role tags, `</s>` or surrounding whitespace.

    Uses the processor's own post-processing helper when it has one, then cuts the text at any further role tag.
    """
    for name in ("post_process_generation", "clean_generated_text", "post_process_text"):
        helper = getattr(processor, name, None)
        if callable(helper):
            text = helper(text)
            break
    text = text.split("</s>")[0].strip()
    # A leading tag ("VUSER: Is it red?") is stripped; a later one ends the text.
    text = re.sub(r"^(?:(?:VUSER|USER|ASSISTANT)\s*:\s*)+", "", text)
    match = _ROLE_TAG.search(text)
    if match:
        text = text[: match.start()]
    return text.strip()


def _normalise_question(text: str) -> str:
    return " ".join(text.lower().split())


def _image_of(image) -> tuple[Any, str | None]:
    from recipes.data import load_image

    if isinstance(image, (str, os.PathLike)):
        return load_image(image), os.fspath(image)
    return load_image(image), None


def _generate(model, processor, prompts: list[str], image, *, generation_kwargs: dict[str, Any]) -> list[str]:
    """Generates one continuation per prompt (all about the same image) and returns the cleaned texts."""
    import torch

    tokenizer = processor.tokenizer
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # batched decoder-only generation: prompts end where generation starts
    try:
        inputs = processor(text=prompts, images=[image] * len(prompts), return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = padding_side
    inputs = inputs.to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with torch.inference_mode():
        output = model.generate(
            **inputs, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **generation_kwargs
        )
    texts = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return [clean_generated_text(processor, text) for text in texts]


@contextlib.contextmanager
def _seeded(model, seed: int):
    """Forks the RNGs the sampling uses (CPU and the model's GPU) and seeds them, leaving the caller's state intact."""
    import torch

    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def self_question(
    model,
    processor,
    image,
    *,
    num_questions: int = 3,
    answer: bool = False,
    describe_prompt: str = DESCRIBE_PROMPT,
    description: str | None = None,
    system_prompt: str | None = None,
    temperature: float = 1.2,
    top_k: int = 300,
    top_p: float = 0.95,
    max_new_tokens: int = 300,
    describe_max_new_tokens: int | None = DESCRIBE_MAX_NEW_TOKENS,
    answer_max_new_tokens: int | None = None,
    max_rounds: int = 3,
    seed: int = 0,
) -> SelfQuestioningResult:
    """Describes `image`, samples `num_questions` questions about it, and optionally answers them.

    Args:
        model: an SQ-LLaVA model.
        processor: its processor (chat template with the `vuser` role).
        image: a path, a `PIL.Image.Image`, or bytes.
        num_questions: questions to keep (after dropping empty and duplicate ones).
        answer: also answer each question (greedy).
        describe_prompt: the instruction the description answers (the authors' "Can you describe the image in
            detail?" by default).
        description: skip the description step and use this one.
        system_prompt: the system prompt of every step, describing, asking and answering (default: the
            self-questioning prompt `SQ_SYSTEM_PROMPT`, as the authors' `v1_sq` conversation uses throughout).
        temperature, top_k, top_p: question sampling (the paper's 1.2, 300, 0.95 by default).
        max_new_tokens: budget per question.
        describe_max_new_tokens: budget of the description (the authors' 1024 by default; `None` is also 1024).
        answer_max_new_tokens: budget of each answer (default `max_new_tokens`).
        max_rounds: sampling rounds to replace dropped questions before returning fewer than `num_questions`.
        seed: seeds the sampling; the same seed, model and image give the same result.

    Returns:
        `SelfQuestioningResult`.
    """
    if not isinstance(num_questions, int) or num_questions < 1:
        raise ValueError(f"num_questions={num_questions!r} must be a positive integer.")
    if not isinstance(max_rounds, int) or max_rounds < 1:
        raise ValueError(f"max_rounds={max_rounds!r} must be a positive integer.")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature!r} must be > 0 (questions are sampled).")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r} must be in (0, 1].")
    pil_image, image_path = _image_of(image)
    describe_max_new_tokens = describe_max_new_tokens or DESCRIBE_MAX_NEW_TOKENS
    answer_max_new_tokens = answer_max_new_tokens or max_new_tokens
    greedy = {"do_sample": False, "num_beams": 1}
    if system_prompt is None:
        from processing import SQ_SYSTEM_PROMPT

        system_prompt = SQ_SYSTEM_PROMPT
    # One system prompt for the whole conversation, as the authors' v1_sq template (sqllava/conversation.py:264-278):
    # the chat template alone would render the description under LLaVA's prompt (no vuser turn yet).
    system = [{"role": "system", "content": system_prompt}]
    context = [{"role": "user", "content": "<image>\n" + describe_prompt}]

    def render(messages: list[dict[str, str]], role: str) -> str:
        return processor.apply_chat_template(
            system + messages, add_generation_prompt=True, generation_role=role, tokenize=False
        )

    model.eval()
    if description is None:
        [description] = _generate(
            model,
            processor,
            [render(context, "assistant")],
            pil_image,
            generation_kwargs={**greedy, "max_new_tokens": describe_max_new_tokens},
        )
    context = context + [{"role": "assistant", "content": description}]

    question_prompt = render(context, "vuser")
    sampling = {
        "do_sample": True,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
    }
    kept: list[str] = []
    seen: set[str] = set()
    num_empty = num_duplicate = 0
    with _seeded(model, seed):
        for _ in range(max_rounds):
            missing = num_questions - len(kept)
            if missing == 0:
                break
            for question in _generate(
                model, processor, [question_prompt] * missing, pil_image, generation_kwargs=sampling
            ):
                key = _normalise_question(question)
                if not key:
                    num_empty += 1
                elif key in seen:
                    num_duplicate += 1
                else:
                    seen.add(key)
                    kept.append(question)
    if len(kept) < num_questions:
        logger.warning(
            "Kept %d of %d questions after %d rounds (%d empty, %d duplicates dropped).",
            len(kept),
            num_questions,
            max_rounds,
            num_empty,
            num_duplicate,
        )

    answers: list[str | None] = [None] * len(kept)
    if answer and kept:
        prompts = [render(context + [{"role": "vuser", "content": q}], "assistant") for q in kept]
        answers = _generate(
            model, processor, prompts, pil_image, generation_kwargs={**greedy, "max_new_tokens": answer_max_new_tokens}
        )
    return SelfQuestioningResult(
        description=description,
        questions=[{"question": q, "answer": a} for q, a in zip(kept, answers)],
        image=image_path,
        num_empty=num_empty,
        num_duplicate=num_duplicate,
        describe_prompt=describe_prompt,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Batch mode: a folder of images -> a new instruction dataset
# ----------------------------------------------------------------------------------------------------------------------


def list_images(images: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[str, list[str]]:
    """The image folder and the image paths relative to it, sorted, for a folder (recursive), a file or a list."""
    if isinstance(images, (str, os.PathLike)):
        path = os.fspath(images)
        if os.path.isdir(path):
            found = []
            for root, _, files in os.walk(path):
                for name in files:
                    if name.lower().endswith(IMAGE_EXTENSIONS):
                        found.append(os.path.relpath(os.path.join(root, name), path))
            if not found:
                raise ValueError(f"`images` folder {path!r} holds no image ({', '.join(IMAGE_EXTENSIONS)}).")
            return path, sorted(found)
        if os.path.isfile(path):
            return os.path.dirname(os.path.abspath(path)), [os.path.basename(path)]
        raise ValueError(f"`images` {path!r} is neither an image file nor a folder.")
    paths = [os.path.abspath(os.fspath(p)) for p in images]
    if not paths:
        raise ValueError("`images` is an empty list; pass a folder, a file or a list of image paths.")
    folder = os.path.commonpath([os.path.dirname(p) for p in paths])
    return folder, [os.path.relpath(p, folder) for p in paths]


def default_progress_path(output_json=None, output_dataset=None) -> str:
    """Where batch mode streams its results: next to the first output (`data.json` -> `data.json.progress.jsonl`)."""
    target = output_json if output_json is not None else output_dataset
    if target is None:
        return os.path.abspath("self_question.progress.jsonl")
    return os.fspath(target).rstrip("/\\") + ".progress.jsonl"


class ProgressFile:
    """The JSON Lines file batch mode streams to: a header with the run's settings, then one line per image
    (`{"index", "image", "result"}` or `{"index", "image", "skipped": reason, "error"}`), flushed and fsync'ed as
    each image is done. Reopening it resumes: the images already done are known, a line cut short by a kill is
    dropped, and settings that differ from the header's are refused (the file would mix two runs).

    Args:
        path: the file.
        settings: what makes the results (model, number of questions, sampling, seed ...), JSON-able.
    """

    FORMAT = "sqllava-self-question-progress/1"

    def __init__(self, path: str | os.PathLike, settings: dict[str, Any]):
        self.path = os.fspath(path)
        self.settings = json.loads(json.dumps(settings, default=str))
        self.entries: dict[str, dict[str, Any]] = {}
        if os.path.isfile(self.path):
            self._load()
        else:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._append({"format": self.FORMAT, "settings": self.settings})

    def _load(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        good_end = 0
        records = []
        for line in lines:
            if not line.strip():
                good_end += len(line) + 1
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a kill: it and anything after it are dropped
            good_end += len(line) + 1
        if good_end < len(data):
            logger.warning("%s: dropping a last line cut short (the previous run was stopped mid-write).", self.path)
            with open(self.path, "r+b") as f:
                f.truncate(min(good_end, len(data)))
        if not records or records[0].get("format") != self.FORMAT:
            raise ValueError(
                f"{self.path} is not a self-question progress file (no header line); move it away or pass another "
                "--progress-file."
            )
        saved = records[0].get("settings", {})
        differences = [
            f"{key}: {saved.get(key)!r} in the file, {self.settings.get(key)!r} now"
            for key in sorted(set(saved) | set(self.settings))
            if saved.get(key) != self.settings.get(key)
        ]
        if differences:
            raise ValueError(
                f"{self.path} holds the results of a run with other settings ({'; '.join(differences)}). Resume with "
                "the same settings, or delete the file (or pass another --progress-file) to start over."
            )
        for entry in records[1:]:
            self.entries[entry["image"]] = entry
        if self.entries:
            logger.info("%s: resuming, %d images already done.", self.path, len(self.entries))

    def _append(self, payload: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(payload, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def __contains__(self, image: str) -> bool:
        return image in self.entries

    def add(self, index: int, image: str, *, result: SelfQuestioningResult | None = None, skipped: str | None = None,
            error: str | None = None) -> None:  # fmt: skip
        entry: dict[str, Any] = {"index": index, "image": image}
        if result is not None:
            entry["result"] = asdict(result)
        else:
            entry.update(skipped=skipped, error=error)
        self._append(entry)
        self.entries[image] = entry

    def results(self, images: Sequence[str]) -> Iterator[tuple[str, SelfQuestioningResult | None, dict]]:
        """`(image, result or None when skipped, entry)` for each of `images` that is done, in that order."""
        for image in images:
            entry = self.entries.get(image)
            if entry is not None:
                result = SelfQuestioningResult(**entry["result"]) if "result" in entry else None
                yield image, result, entry


def generate_dataset(
    model,
    processor,
    images: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    output_json: str | os.PathLike | None = None,
    output_dataset: str | os.PathLike | None = None,
    push_to_hub: str | None = None,
    private: bool = True,
    num_questions: int = 3,
    answer: bool = True,
    seed: int = 0,
    limit: int | None = None,
    progress: bool = True,
    progress_file: str | os.PathLike | None = None,
    model_id: str | None = None,
    **self_question_kwargs: Any,
) -> dict[str, Any]:
    """Runs `self_question` on every image and writes the results as a new instruction dataset.

    Image `i` (in sorted order) is seeded with `seed + i`, so a sample does not depend on which other images are in
    the run. Each result is appended to `progress_file` as it is made; a rerun with the same settings resumes,
    skipping the images already there (a killed run loses at most the image in progress). Images that cannot be
    read (or are over the size limits) are skipped and counted; records whose description came out empty are
    skipped (a training turn cannot be empty) and counted. The outputs are written at the end, from the progress
    file, in image order.

    Args:
        model, processor: the SQ-LLaVA model and its processor.
        images: a folder (searched recursively), one image file, or a list of image paths.
        output_json: write a LLaVA JSON list (`id`, `image` relative to the image folder, `conversations`).
        output_dataset: write an HF dataset (`id`, `images`, `messages`; image bytes embedded) with `save_to_disk`.
        push_to_hub: push the HF dataset to this Hub repo id.
        private: create the Hub dataset repo private.
        num_questions, answer, seed: see `self_question`.
        limit: use only the first `limit` images.
        progress: show a tqdm progress bar.
        progress_file: the JSON Lines file results stream to (default: `default_progress_path`).
        model_id: the model's name or path, recorded in the progress file's settings (a resume must use the same).
        self_question_kwargs: any other `self_question` argument (sampling settings, prompts).

    Returns:
        Statistics: `num_images`, `num_records`, `num_questions`, `num_answered`, `num_empty`, `num_duplicate`,
        `num_empty_description`, `num_empty_answer`, `num_unreadable` (with `unreadable` examples), `num_resumed`,
        and the output paths.
    """
    from tqdm.auto import tqdm

    from recipes.data import load_image

    if output_json is None and output_dataset is None and push_to_hub is None:
        raise ValueError("Nothing to write: pass output_json, output_dataset and/or push_to_hub.")
    image_folder, relative_paths = list_images(images)
    if limit is not None:
        relative_paths = relative_paths[:limit]
    settings = {
        "model": model_id if model_id is not None else getattr(getattr(model, "config", None), "_name_or_path", None),
        "image_folder": os.path.abspath(image_folder),
        "num_questions": num_questions,
        "answer": answer,
        "seed": seed,
        **{key: value for key, value in sorted(self_question_kwargs.items())},
    }
    progress_file = progress_file if progress_file is not None else default_progress_path(output_json, output_dataset)
    done = ProgressFile(progress_file, settings)
    num_resumed = sum(1 for relative in relative_paths if relative in done)
    for index, relative in enumerate(tqdm(relative_paths, desc="self-question", unit="img", disable=not progress)):
        if relative in done:
            continue
        path = os.path.join(image_folder, relative)
        try:
            image = load_image(path)
        except ValueError as error:  # corrupt, truncated, not an image, over the size limits: skipped and counted
            logger.warning("Skipping image %s: %s", relative, error)
            done.add(index, relative, skipped="unreadable_image", error=str(error))
            continue
        result = self_question(
            model, processor, image, num_questions=num_questions, answer=answer, seed=seed + index,
            **self_question_kwargs,
        )  # fmt: skip
        result.image = relative
        done.add(index, relative, result=result)

    stats: dict[str, Any] = {
        "num_images": len(relative_paths),
        "num_records": 0,
        "num_questions": 0,
        "num_answered": 0,
        "num_empty": 0,
        "num_duplicate": 0,
        "num_empty_description": 0,
        "num_empty_answer": 0,
        "num_unreadable": 0,
        "num_resumed": num_resumed,
        "progress_file": done.path,
    }
    records = []
    unreadable = []
    for relative, result, entry in done.results(relative_paths):
        if result is None:
            stats["num_unreadable"] += 1
            unreadable.append(f"{relative}: {entry.get('error')}")
            continue
        stats["num_empty"] += result.num_empty
        stats["num_duplicate"] += result.num_duplicate
        stats["num_questions"] += len(result.questions)
        stats["num_answered"] += sum(1 for qa in result.questions if qa["answer"])
        if answer:
            stats["num_empty_answer"] += sum(1 for qa in result.questions if not qa["answer"])
        if not result.description:
            stats["num_empty_description"] += 1
            continue
        records.append((os.path.splitext(relative)[0].replace(os.sep, "/"), result))
    stats["num_records"] = len(records)
    if unreadable:
        stats["unreadable"] = unreadable[:20]
        logger.warning("Skipped %d unreadable images, e.g. %s", len(unreadable), unreadable[0])
    if stats["num_empty_description"]:
        logger.warning("Skipped %d images whose description was empty.", stats["num_empty_description"])

    if output_json is not None:
        from recipes.checkpoints import write_json_durably

        output_json = os.fspath(output_json)
        os.makedirs(os.path.dirname(os.path.abspath(output_json)), exist_ok=True)
        write_json_durably(output_json, [result.to_llava(sample_id) for sample_id, result in records])
        stats["output_json"] = output_json
        stats["image_folder"] = image_folder
    if output_dataset is not None or push_to_hub is not None:
        dataset = to_hf_dataset(records, image_folder)
        if output_dataset is not None:
            dataset.save_to_disk(os.fspath(output_dataset))
            stats["output_dataset"] = os.fspath(output_dataset)
        if push_to_hub is not None:
            dataset.push_to_hub(push_to_hub, private=private)
            stats["push_to_hub"] = push_to_hub
    return stats


def to_hf_dataset(records: Sequence[tuple[str, SelfQuestioningResult]], image_folder: str):
    """An HF `datasets.Dataset` (`id`, `images`, `messages`, `questions`) with the image bytes embedded.

    The bytes go in the dataset so that a dataset saved to disk or pushed does not point at local files.
    """
    import datasets

    # datasets >= 4 has `List`; 3.x spells a list of features `[feature]` (its `Sequence` of a dict is a dict of lists).
    list_of = getattr(datasets, "List", None) or (lambda feature: [feature])
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "images": list_of(datasets.Image()),
            "messages": list_of({"role": datasets.Value("string"), "content": datasets.Value("string")}),
            "questions": list_of(datasets.Value("string")),
        }
    )
    rows: dict[str, list] = {"id": [], "images": [], "messages": [], "questions": []}
    for sample_id, result in records:
        with open(os.path.join(image_folder, result.image), "rb") as f:
            image = {"bytes": f.read(), "path": os.path.basename(result.image)}
        rows["id"].append(sample_id)
        rows["images"].append([image])
        rows["messages"].append(result.to_messages())
        rows["questions"].append([qa["question"] for qa in result.questions])
    return datasets.Dataset.from_dict(rows, features=features)


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--model", required=True, help="Hub id or folder of the model (and its processor).")
    parser.add_argument("--images", required=True, help="An image file or a folder of images (searched recursively).")
    parser.add_argument("--num-questions", type=int, default=3)
    parser.add_argument("--answer", action="store_true", help="Also answer the questions (needed for training data).")
    parser.add_argument("--output", default=None, help="Write a LLaVA JSON dataset here.")
    parser.add_argument("--output-dataset", default=None, help="Write an HF dataset (save_to_disk) to this folder.")
    parser.add_argument("--push-to-hub", default=None, help="Push the HF dataset to this Hub repo id.")
    parser.add_argument(
        "--progress-file",
        default=None,
        help="JSON Lines file each result is appended to as it is made; rerunning resumes from it "
        "(default: <output>.progress.jsonl).",
    )
    parser.add_argument("--public", action="store_true", help="Create the pushed dataset repo public.")
    parser.add_argument("--describe-prompt", default=DESCRIBE_PROMPT)
    parser.add_argument(
        "--system-prompt", default=None, help="System prompt of every step (default: the self-questioning one)."
    )
    parser.add_argument("--temperature", type=float, default=1.2)
    parser.add_argument("--top-k", type=int, default=300)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-new-tokens", type=int, default=300, help="Budget per question.")
    parser.add_argument("--describe-max-new-tokens", type=int, default=DESCRIBE_MAX_NEW_TOKENS)
    parser.add_argument("--answer-max-new-tokens", type=int, default=None)
    parser.add_argument("--max-rounds", type=int, default=3, help="Rounds to redraw empty/duplicate questions.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N images.")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--device", default=None, help="Default: cuda when available, else cpu.")
    from recipes.loading import add_trust_remote_code_argument

    add_trust_remote_code_argument(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Any:
    from recipes.loading import load_model_and_processor

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model, processor = load_model_and_processor(
        args.model, trust_remote_code=args.trust_remote_code, dtype=args.dtype, device=args.device
    )
    kwargs = {
        "num_questions": args.num_questions,
        "answer": args.answer,
        "describe_prompt": args.describe_prompt,
        "system_prompt": args.system_prompt,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens,
        "describe_max_new_tokens": args.describe_max_new_tokens,
        "answer_max_new_tokens": args.answer_max_new_tokens,
        "max_rounds": args.max_rounds,
        "seed": args.seed,
    }
    if args.output or args.output_dataset or args.push_to_hub:
        stats = generate_dataset(
            model,
            processor,
            args.images,
            output_json=args.output,
            output_dataset=args.output_dataset,
            push_to_hub=args.push_to_hub,
            private=not args.public,
            limit=args.limit,
            progress_file=args.progress_file,
            model_id=args.model,
            **kwargs,
        )
        print(json.dumps(stats, indent=2))
        return stats
    from recipes.data import load_image

    image_folder, relative_paths = list_images(args.images)
    results = []
    for index, relative in enumerate(relative_paths[: args.limit]):
        path = os.path.join(image_folder, relative)
        try:
            image = load_image(path)
        except ValueError as error:  # one unreadable image among many: skipped, the others still answered
            logger.warning("Skipping image %s: %s", relative, error)
            continue
        result = self_question(model, processor, image, **{**kwargs, "seed": args.seed + index})
        result.image = path
        results.append(asdict(result))
        print(json.dumps(asdict(result), ensure_ascii=False), flush=True)
    return results


def _script_sys_path() -> None:
    """Make `python recipes/self_question.py` import the real `evaluate` package and `recipes.*`.

    A script's folder goes first on sys.path, and there recipes/evaluate.py shadows the `evaluate` package
    wherever it is imported. The repository root replaces it; only stdlib modules are imported before this runs.
    """
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _SCRIPT_DIR]
    sys.path.insert(0, os.path.dirname(_SCRIPT_DIR))


if __name__ == "__main__":
    _script_sys_path()
    main()
