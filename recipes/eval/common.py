"""What every benchmark of `recipes.eval` shares: files, questions, the registry, answers files, scoring, tables.

A benchmark (one class per benchmark in the family modules `vqa.py`, `gqa.py`, `pope.py`, `scienceqa.py`,
`mmbench.py`, `judged.py`, `shapes.py`) turns the files of LLaVA's evaluation bundle into [`Question`]s, each holding
exactly the user turn LLaVA's `model_vqa_loader.py` / `model_vqa_science.py` / `model_vqa_mmbench.py` /
`model_vqa.py` build in conv mode v1, and scores an answers file with the official rules (the `evaluate` modules of
`recipes/eval/metrics/`). This module holds what they share (batched answering is in `answering.py`):

- reading the bundle's files with errors that name the file and line (and the expected path of a missing file);
- answers files in LLaVA's format (one JSON object per line: `question_id`, `prompt`, `text`, `answer_id`,
  `model_id`, `metadata`; MMBench adds `round_id`, `options`, `option_char`), validated with errors that name the
  file and the line: half-written lines, non-string `text`, duplicate ids, answers to unknown questions, another
  model's answers (refused unless `--force`);
- the benchmark registry, and scoring into the JSON `{"benchmark", "split", "metrics", "per_question", "counts",
  "notes", ...}` (metrics as unrounded fractions; questions without an answer counted, and scored as the official
  scorer treats them), and its printed table.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
import uuid
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

METRICS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metrics")
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
# LLaVA's `--single-pred-prompt` (ScienceQA, MMBench) and its Chinese form (`--lang cn`).
MULTIPLE_CHOICE_SUFFIX = "Answer with the option's letter from the given choices directly."
MULTIPLE_CHOICE_SUFFIX_CN = "请直接回答选项字母。"
# LLaVA's conv_templates["v1"] and ["vicuna_v1"] are the same object (conv_vicuna_v1), in LLaVA and in SQ-LLaVA.
CONV_MODES = ("v1", "vicuna_v1")
SKIP_REASONS = ("missing", "unreadable", "outside_image_folder")
_FAMILY_MODULES = ("vqa", "gqa", "pope", "scienceqa", "mmbench", "judged", "shapes")


# ----------------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------------


def require_file(path: str, what: str) -> str:
    """`path` if it is a file, else a ValueError naming the expected path and what it should hold."""
    if not os.path.isfile(path):
        raise ValueError(f"{what} not found: expected {path!r}. Lay the files out as LLaVA's docs/Evaluation.md does.")
    return path


def read_json(path: str, what: str) -> Any:
    """One JSON document, with errors that name the file (and the line) instead of a bare JSONDecodeError."""
    require_file(path, what)
    with open(path, encoding="utf-8") as f:
        content = f.read()
    if not content.strip():
        raise ValueError(f"{path} is empty; expected {what} (one JSON document).")
    try:
        return json.loads(content)
    except json.JSONDecodeError as error:
        lines = [line for line in content.splitlines() if line.strip()]
        if len(lines) > 1:
            try:
                json.loads(lines[0])
                raise ValueError(
                    f"{path} holds JSON Lines (one object per line) but {what} is one JSON document."
                ) from None
            except json.JSONDecodeError:
                pass
        raise ValueError(f"{path}:{error.lineno} is not valid JSON ({error.msg}); expected {what}.") from None


def read_jsonl(path: str, what: str) -> list[tuple[int, Any]]:
    """`(line number, object)` for every non-blank line of a JSON Lines file."""
    require_file(path, what)
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                hint = (
                    " (the whole file is one JSON document, not JSON Lines)"
                    if number == 1 and line.lstrip()[:1] in "[{" and not line.rstrip().endswith(("}", "]"))
                    else ""
                )
                raise ValueError(f"{path}:{number} is not valid JSON ({error.msg}){hint}; expected {what}.") from None
    if not rows:
        raise ValueError(f"{path} is empty; expected {what} (JSON Lines).")
    return rows


def require_fields(row: Any, fields: Sequence[str], where: str) -> Mapping[str, Any]:
    """`row` if it is a JSON object with every field of `fields`, else an error naming `where` and the field."""
    if not isinstance(row, Mapping):
        raise TypeError(f"{where} is a {type(row).__name__}, expected a JSON object.")
    for field in fields:
        if field not in row:
            raise ValueError(f"{where} has no {field!r} (keys: {sorted(row)}).")
    return row


def require_str(value: Any, field: str, where: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{where}: {field!r} is {value!r} ({type(value).__name__}); it must be a string.")
    return value


def atomic_write_text(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(temporary, path)


def write_json(path: str, obj: Any, indent: int | None = 2) -> None:
    """Write JSON atomically (a temporary file, then a rename): a killed run never leaves half a file."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------------------------------
# Questions
# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Question:
    """One prompt to answer, as LLaVA's answering script builds it.

    Args:
        key: the id answers are matched by (`question_id` as a string; `(question_id, round_id)` for MMBench;
            `(question_id, text)` for TextVQA, whose LLaVA question ids are image ids shared by several questions).
        text: the user turn after the image placeholder, e.g. `"What is it?\\nAnswer the question using a single
            word or phrase."`: the model sees `"<image>\\n" + text` (just `text` without an image).
        image: the image: a path relative to the image folder, the encoded bytes / base64 text of an embedded image
            (`bytes`), or None for a text-only question.
        row: the leading fields of the answer row in LLaVA's order (`question_id`, maybe `round_id`, `prompt`, then
            possibly `options`, `option_char` after the text); `text` is filled in when answered.
        unit: what `--num-chunks` and `--limit` count (a TSV row for MMBench, whose rotations stay together).
        source: `file:line` of the question, for error messages.
        info: what the scorer needs and the answer row does not carry (the question file's row, the correct option
            of this rotation, ...).
    """

    key: Hashable
    text: str
    image: str | bytes | None
    row: dict[str, Any]
    unit: Hashable = None
    source: str = ""
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.unit is None:
            self.unit = self.key


def question_key(question_id: Any) -> str:
    """Answers and questions are matched on the string form of `question_id` (`5` and `"5"` are the same id)."""
    return str(question_id)


def chunk_questions(questions: Sequence[Question], num_chunks: int, chunk_idx: int) -> list[Question]:
    """The `chunk_idx`-th of `num_chunks` contiguous chunks, counted in units, as LLaVA's `get_chunk` splits.

    LLaVA takes `ceil(n / num_chunks)` items per chunk (so the last chunks may be short or empty).
    """
    if not isinstance(num_chunks, int) or num_chunks < 1:
        raise ValueError(f"--num-chunks {num_chunks!r} must be a positive integer.")
    if not isinstance(chunk_idx, int) or not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"--chunk-idx {chunk_idx!r} must be in [0, {num_chunks}) for --num-chunks {num_chunks}.")
    units = list(dict.fromkeys(q.unit for q in questions))
    size = math.ceil(len(units) / num_chunks) if units else 0
    chosen = set(units[chunk_idx * size : (chunk_idx + 1) * size])
    return [q for q in questions if q.unit in chosen]


def limit_questions(questions: Sequence[Question], limit: int | None) -> list[Question]:
    """The questions of the first `limit` units (all of them when `limit` is None)."""
    if limit is None:
        return list(questions)
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"--limit {limit!r} must be a positive integer.")
    units = set(list(dict.fromkeys(q.unit for q in questions))[:limit])
    return [q for q in questions if q.unit in units]


# ----------------------------------------------------------------------------------------------------------------------
# Benchmarks and their registry
# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ScoreResult:
    """What a benchmark's scorer returns: metrics (unrounded fractions), per-question scores and notes."""

    metrics: dict[str, float]
    per_question: dict[str, float]
    num_questions: int
    num_answered: int
    num_missing: int
    missing_policy: str
    notes: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


class Benchmark:
    """One benchmark in LLaVA's evaluation layout. Subclasses set the class attributes and implement the loaders.

    Class attributes:
        name: the `--benchmark` name. title: its display name.
        splits: the splits it knows; default_split: the one LLaVA-1.5 / SQ-LLaVA report.
        scored_splits: the splits with local ground truth; submit_splits: those with an upload file.
        max_new_tokens: the budget of LLaVA's answering script (128 in `model_vqa_loader.py`; 1024 in
            `model_vqa_science.py`, `model_vqa_mmbench.py` and `model_vqa.py`).
        headline: the metric key reported in the paper's table. metric_label: how the table names it.
        llava_cleanup: answers are `decode(skip_special_tokens=True).strip()` as in LLaVA (else the processor's
            `post_process_generation`).
    """

    name = ""
    title = ""
    splits: tuple[str, ...] = ()
    default_split = ""
    scored_splits: tuple[str, ...] = ()
    submit_splits: tuple[str, ...] = ()
    max_new_tokens = 128
    headline = "accuracy"
    metric_label = "accuracy"
    llava_cleanup = True
    needs_judge = False

    def resolve_split(self, split: str | None) -> str:
        split = split or self.default_split
        if split not in self.splits:
            raise ValueError(f"--split {split!r} is not a split of {self.name}; use one of {list(self.splits)}.")
        return split

    def question_file(self, root: str, split: str) -> str:
        raise NotImplementedError

    def image_folder(self, root: str, split: str) -> str | None:
        raise NotImplementedError

    def load_questions(self, root: str, split: str, question_file: str | None = None, **options) -> list[Question]:
        raise NotImplementedError

    def answer_key(self, row: Mapping[str, Any], where: str) -> Hashable:
        """The key of an answer row (the question it answers)."""
        return question_key(row["question_id"])

    def load_for_scoring(
        self, root: str, split: str, files: Sequence[str], question_file: str | None, force: bool, **options
    ) -> tuple[list[Question], AnswersFile, list[str]]:
        """The questions to score, the validated answers of `files`, and notes on how they were matched."""
        questions = self.load_questions(root, split, question_file=question_file)
        answers = read_answers(files, self, Counter(q.key for q in questions))
        check_model_id(answers, None, files, force)
        return questions, answers, []

    def score(self, root: str, split: str, questions: list[Question], answers: dict, **options) -> ScoreResult:
        raise NotImplementedError

    def write_submission(self, root: str, split: str, questions: list[Question], answers: dict, output: str) -> dict:
        raise ValueError(f"{self.name} has no evaluation-server upload file; score it locally with `score`.")

    def check_scorable(self, split: str) -> None:
        if split not in self.scored_splits:
            where = "upload the file `submit` writes to its evaluation server" if split in self.submit_splits else ""
            raise ValueError(
                f"{self.name} {split} has no public ground truth: {where or 'nothing to score locally'}"
                + (f"; for a local score use --split {self.scored_splits[0]}." if self.scored_splits else ".")
            )


BENCHMARKS: dict[str, Benchmark] = {}


def register(cls: type[Benchmark]) -> type[Benchmark]:
    """Class decorator: make a benchmark available under its `name`."""
    BENCHMARKS[cls.name] = cls()
    return cls


def all_benchmarks() -> dict[str, Benchmark]:
    """Every registered benchmark by name (imports the family modules)."""
    for module in _FAMILY_MODULES:
        importlib.import_module(f"recipes.eval.{module}")
    return BENCHMARKS


def get_benchmark(name: str) -> Benchmark:
    benchmarks = all_benchmarks()
    if name not in benchmarks:
        raise ValueError(f"--benchmark {name!r} is unknown; use one of {sorted(benchmarks)}.")
    return benchmarks[name]


# ----------------------------------------------------------------------------------------------------------------------
# Answers files
# ----------------------------------------------------------------------------------------------------------------------


class AnswersFileError(ValueError):
    """An answers file that cannot be used as it is (named file and line in the message)."""


@dataclasses.dataclass
class AnswersFile:
    """The validated content of one or more answers files: `rows[key]`, and where each key was read."""

    rows: dict[Hashable, dict[str, Any]]
    where: dict[Hashable, str]
    model_ids: Counter
    torn_tail: tuple[str, int] | None = None  # (path, byte offset where a torn last line starts)
    missing_newline: str | None = None  # a file whose last (valid) line has no newline


def read_answers(
    paths: str | Sequence[str],
    benchmark: Benchmark,
    known_keys: Mapping[Hashable, int],
    *,
    resume: bool = False,
) -> AnswersFile:
    """Read and validate answers files in LLaVA's format.

    Args:
        paths: one file or several (e.g. the chunks of a multi-GPU run); a missing file reads as empty when
            `resume` is True.
        benchmark: decides the key of each row (`question_id`, `(question_id, round_id)` for MMBench, ...).
        known_keys: the keys of the benchmark's questions, each with how often it may be answered (1, except for
            questions that LLaVA's question file itself repeats).
        resume: the file is about to be appended to (`answer`): a torn last line (a killed run) is reported in
            `torn_tail` instead of raising; otherwise (`score`) it is an error.

    Raises:
        AnswersFileError: naming the file and line of a line that is not JSON (not the torn last line when
            resuming), not an object, without `question_id` or with a non-string `text`, an answer to a question the
            benchmark does not have, or an answer given more often than its question is asked.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    rows: dict[Hashable, dict[str, Any]] = {}
    where: dict[Hashable, str] = {}
    counts: Counter = Counter()
    model_ids: Counter = Counter()
    torn_tail = None
    missing_newline = None
    for path in map(os.fspath, paths):
        if not os.path.isfile(path):
            if resume:
                continue
            raise AnswersFileError(f"Answers file not found: {path!r}.")
        with open(path, "rb") as f:
            lines = f.readlines()
        offset = 0
        for index, raw in enumerate(lines):
            number, last = index + 1, index == len(lines) - 1
            location = f"{path}:{number}"
            if not raw.strip():
                offset += len(raw)
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                if last and not raw.endswith(b"\n") and resume:
                    torn_tail = (path, offset)
                    break
                half = " It is half-written (a run killed mid-write?)" if last and not raw.endswith(b"\n") else ""
                raise AnswersFileError(
                    f"{location} is not valid JSON.{half} Rerun `answer` on this file (it drops a torn last line and "
                    "answers that question again) or delete the line."
                ) from None
            if last and not raw.endswith(b"\n"):
                missing_newline = path
            offset += len(raw)
            if not isinstance(row, dict):
                raise AnswersFileError(f"{location} is a JSON {type(row).__name__}, expected an object.")
            if "question_id" not in row:
                raise AnswersFileError(f"{location} has no 'question_id' (keys: {sorted(row)}).")
            if not isinstance(row.get("text"), str):
                raise AnswersFileError(
                    f"{location}: 'text' is {row.get('text')!r} ({type(row.get('text')).__name__}); every answer "
                    "must carry its text as a string."
                )
            try:
                key = benchmark.answer_key(row, location)
            except (KeyError, TypeError, ValueError) as error:
                raise AnswersFileError(f"{location}: {error}") from None
            if key not in known_keys:
                raise AnswersFileError(
                    f"{location} answers question {show_key(key)}, which {benchmark.name} does not have: is this "
                    "the answers file of another benchmark or split?"
                )
            counts[key] += 1
            if counts[key] > known_keys[key]:
                raise AnswersFileError(
                    f"{location} answers question {show_key(key)} again (first answered at {where[key]}); "
                    "remove one of the two lines."
                )
            if key not in rows:
                rows[key], where[key] = row, location
            model_ids[row.get("model_id")] += 1
    return AnswersFile(rows, where, model_ids, torn_tail, missing_newline)


def show_key(key: Hashable) -> str:
    if isinstance(key, tuple):
        return "(" + ", ".join(repr(part) for part in key) + ")"
    return repr(key)


def key_text(key: Hashable) -> str:
    """A question key as a JSON object key (`(5, 2)` -> `"5|2"`)."""
    return "|".join(map(str, key)) if isinstance(key, tuple) else str(key)


def check_model_id(answers: AnswersFile, model_id: str | None, paths: str | Sequence[str], force: bool) -> None:
    """Refuse answers written by another model (or a mix of models), unless `force`.

    Args:
        model_id: the model about to answer (`answer`); None when scoring (then only a mix is refused).
    """
    if force:
        return
    names = list(answers.model_ids)
    shown = ", ".join(f"{name!r} ({n})" for name, n in answers.model_ids.most_common())
    if model_id is not None and any(name != model_id for name in names):
        raise AnswersFileError(
            f"{paths} holds answers written by model_id {shown}, not by {model_id!r}: resuming would mix two models' "
            "answers in one score. Use another --answers file, or pass --force if it is the same model under "
            "another name."
        )
    if model_id is None and len(names) > 1:
        raise AnswersFileError(
            f"{paths} mixes answers of several models: {shown}. Score each model's answers on their own, or pass "
            "--force to score them together."
        )


def skipped_file(answers_file: str) -> str:
    """The sidecar that lists the questions whose image could not be read (`answers.jsonl` -> `answers.skipped.json`)."""
    root, _ = os.path.splitext(os.fspath(answers_file))
    return root + ".skipped.json"


def read_skipped(answers_files: str | Sequence[str]) -> dict[str, str]:
    """`{question key: reason}` of the questions skipped when the answers files were written."""
    files = [answers_files] if isinstance(answers_files, (str, os.PathLike)) else list(answers_files)
    skipped: dict[str, str] = {}
    for answers_file in files:
        path = skipped_file(answers_file)
        if os.path.isfile(path):
            content = read_json(path, "the skipped-image list written by `answer`")
            skipped.update(content.get("skipped", {}) if isinstance(content, dict) else {})
    return skipped


# ----------------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------------

_METRIC_CACHE: dict[str, Any] = {}


def load_metric(name: str):
    """The `evaluate` module `recipes/eval/metrics/<name>` (loaded by path, offline), cached per process."""
    if name not in _METRIC_CACHE:
        try:
            import evaluate
        except ImportError:
            raise ImportError(
                "Scoring needs the `evaluate` package: pip install 'sqllava[eval]' (or pip install evaluate datasets)."
            ) from None
        path = os.path.join(METRICS_DIR, name)
        if not os.path.isdir(path):
            raise ValueError(f"No metric module {name!r} in {METRICS_DIR}.")
        _METRIC_CACHE[name] = evaluate.load(path)
    return _METRIC_CACHE[name]


def metric_module(name: str):
    """The Python module behind a loaded metric (to reach its helpers, e.g. the VQA answer processor)."""
    import inspect

    return inspect.getmodule(type(load_metric(name)))


def compute_metric(name: str, predictions: list[str], references: list, **kwargs) -> dict[str, Any]:
    if not predictions:
        raise ValueError(f"Nothing to score with {name}: no question has both an answer and ground truth.")
    return load_metric(name).compute(predictions=predictions, references=references, **kwargs)


def score_answers(
    benchmark: Benchmark,
    root: str,
    answers_files: str | Sequence[str],
    *,
    split: str | None = None,
    question_file: str | None = None,
    limit: int | None = None,
    force: bool = False,
    **options,
) -> dict[str, Any]:
    """Score answers files of `benchmark` with its official rules; no model is loaded.

    Args:
        benchmark: the benchmark.
        root: the evaluation root (LLaVA's `playground/data/eval`).
        answers_files: one or more answers files in LLaVA's format (written by `answer`, by LLaVA's scripts or by
            another engine); several files (the chunks of a multi-GPU run) are scored together.
        split: defaults to the benchmark's.
        question_file: replaces the benchmark's question file (same format).
        limit: score only the first `limit` questions (the subset `answer --limit` answers).
        force: score answers of several `model_id`s together.
        options: benchmark options (`all_rounds` for MMBench; the judge settings for LLaVA-Bench / MM-Vet).

    Returns:
        `{"benchmark", "split", "metrics", "per_question", "counts", "missing_policy", "notes", "answers_files",
        "model_ids"}`; metrics are unrounded fractions in [0, 1].
    """
    split = benchmark.resolve_split(split)
    benchmark.check_scorable(split)
    files = [answers_files] if isinstance(answers_files, (str, os.PathLike)) else list(answers_files)
    files = [os.fspath(f) for f in files]
    questions, answers, notes = benchmark.load_for_scoring(root, split, files, question_file, force, **options)
    questions = limit_questions(questions, limit)
    keys = {q.key for q in questions}
    answers.rows = {k: v for k, v in answers.rows.items() if k in keys}
    result = benchmark.score(root, split, questions, answers.rows, **options)
    unanswered = {key_text(key) for key in keys - set(answers.rows)}
    skipped = {k: v for k, v in read_skipped(files).items() if k in unanswered}
    notes = list(notes) + list(result.notes)
    if result.num_missing:
        policy = {
            "wrong": "scored as wrong",
            "excluded": "left out of the score, as the official script (which reads only the answers) does",
        }[result.missing_policy]
        notes.append(f"{result.num_missing} of {result.num_questions} questions have no answer: {policy}.")
    if skipped:
        notes.append(
            f"{len(skipped)} of them were skipped by `answer` for their image: {dict(Counter(skipped.values()))}."
        )
    return {
        "benchmark": benchmark.name,
        "split": split,
        "metrics": result.metrics,
        "per_question": result.per_question,
        "counts": {
            "questions": result.num_questions,
            "answered": result.num_answered,
            "missing": result.num_missing,
            "skipped_images": dict(Counter(skipped.values())),
        },
        "missing_policy": result.missing_policy,
        "notes": notes,
        "answers_files": files,
        "model_ids": sorted(str(m) for m in answers.model_ids),
        **result.extra,
    }


def predictions_and_missing(questions: Sequence[Question], answers: Mapping[Hashable, Mapping[str, Any]]):
    """`(answered questions, missing questions)` in question order, each key once."""
    answered, missing, seen = [], [], set()
    for q in questions:
        if q.key in seen:
            continue
        seen.add(q.key)
        (answered if q.key in answers else missing).append(q)
    return answered, missing


# ----------------------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------------------


def percent(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def format_score_table(result: Mapping[str, Any]) -> str:
    """A plain-text table of one score JSON (metrics in percent, then the counts and notes)."""
    lines = [f"{result['benchmark']} ({result['split']})"]
    width = max([len(k) for k in result["metrics"]] + [10])
    for name, value in result["metrics"].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"  {name:<{width}}  {percent(float(value)):>6}")
    counts = result["counts"]
    lines.append(
        f"  questions {counts['questions']}, answered {counts['answered']}, missing {counts['missing']}"
        + (f", skipped images {counts['skipped_images']}" if counts.get("skipped_images") else "")
    )
    lines.extend(f"  note: {note}" for note in result.get("notes", []))
    return "\n".join(lines)
