"""Data loading for SQ-LLaVA training: LLaVA / ShareGPT4V JSON, HF datasets and weighted mixtures, into one record.

Every dataset here yields the canonical record the collator takes:

    {"id": str, "index": int, "images": [str path | PIL.Image], "messages": [{"role": "user" | "assistant", "content": str}]}

`index` is the position of the sample in the dataset it is read from (the collator seeds its vuser draw with it);
the first user message starts with one `"<image>\\n"` per image when the sample has images. Images stay paths and are
opened by the collator (`load_image`) inside dataloader workers, so loading a 665K-record JSON stores strings only.

Bad records never crash an epoch and are never trained on silently: they are skipped at load and counted by reason
in a `SkipStats` (`missing_image`, `image_outside_folder`, `non_alternating`, `empty_text`, `image_token_mismatch`,
`non_utf8`, `malformed_record`, and `unreadable_image` / `image_size_limit` with `verify_images=True`);
`strict=True` raises on the first one instead. Images that are present but turn out corrupt or over the size limits
only at decode time are the collator's to skip (`load_image` raises a `ValueError` naming the file). A data file
that cannot be read as a whole (not JSON, JSON Lines in a `.json` file, empty) is an error naming the file.

Why a list-backed `torch.utils.data.Dataset` rather than `datasets.Dataset` for LLaVA JSON: it reads 665K records in
seconds with no Arrow cache to write or invalidate, keeps exactly one compact copy of the text in memory (the
reference LLaVA code keeps the raw dicts), and pickles cheaply to dataloader workers. HF datasets stay
`datasets.Dataset` underneath (`HFConversationDataset`): Arrow memory-mapping is already the light option there.

>>> from recipes.data import load_llava_json, SkipStats
>>> stats = SkipStats()
>>> train = load_llava_json("data/shapes/finetune.json", stats=stats)  # doctest: +SKIP
>>> train[0]["messages"][0]["content"]  # doctest: +SKIP
'<image>\\nWhere is the yellow circle?'
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from processing.processing_sqllava import (
    MAX_IMAGE_ASPECT_RATIO,
    MAX_IMAGE_PIXELS,
    ImageLimitError,
    check_image_limits,
    load_image_rgb,
)


logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
# LLaVA's length estimate adds a fixed 128 "words" for an image: only the order of lengths matters for grouping.
IMAGE_LENGTH_ESTIMATE = 128

SKIP_REASONS: tuple[str, ...] = (
    "missing_image",
    "image_outside_folder",
    "unreadable_image",
    "image_size_limit",
    "non_alternating",
    "empty_text",
    "image_token_mismatch",
    "non_utf8",
    "malformed_record",
)
_ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
# How a Python user and a command-line user turn strict mode off (both read in error messages).
_NOT_STRICT = "strict=False in Python, `--strict_data false` on the command line"


# ----------------------------------------------------------------------------------------------------------------------
# Skip statistics
# ----------------------------------------------------------------------------------------------------------------------


class SkipStats:
    """Counts of skipped records by reason, with a few example sample ids and the first detail per reason.

    Picklable (plain attributes) so dataloader workers can carry one, and mergeable (`merge`, `+`) to sum several
    datasets or workers. `seen` counts the records examined (skipped or not), so `fraction` is the share skipped.

    Args:
        max_examples: sample ids kept per reason (counts are always exact).

    >>> stats = SkipStats()
    >>> stats.add("missing_image", "000123", detail="image file 'a.png' not found")
    >>> stats.seen = 10
    >>> stats.as_dict()["counts"], stats.fraction
    ({'missing_image': 1}, 0.1)
    """

    def __init__(self, max_examples: int = 5):
        self.max_examples = max_examples
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.details: dict[str, str] = {}
        self.seen = 0

    def add(self, reason: str, sample_id: Any, count: int = 1, detail: str | None = None) -> None:
        """Records `count` skipped samples for `reason`; `sample_id` is kept as an example while there is room, and
        `detail` (what is wrong) when it is the reason's first."""
        self.counts[reason] += count
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.max_examples:
            examples.append(str(sample_id))
        if detail and reason not in self.details:
            self.details[reason] = f"{sample_id}: {detail}"

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def fraction(self) -> float:
        """Skipped records over records examined (`seen`); 0.0 when nothing was examined."""
        return self.total / self.seen if self.seen else 0.0

    def __len__(self) -> int:
        return self.total

    def __bool__(self) -> bool:
        return self.total > 0

    def merge(self, other: SkipStats) -> SkipStats:
        """Adds the counts, `seen`, examples and details of `other` into this object (in place) and returns it."""
        if not isinstance(other, SkipStats):
            raise TypeError(f"`other` must be a SkipStats, got {type(other).__name__}.")
        self.counts.update(other.counts)
        self.seen += other.seen
        for reason, ids in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(ids[: max(0, self.max_examples - len(mine))])
        for reason, detail in other.details.items():
            self.details.setdefault(reason, detail)
        return self

    def __add__(self, other: SkipStats) -> SkipStats:
        out = SkipStats(self.max_examples)
        return out.merge(self).merge(other)

    def as_dict(self) -> dict[str, Any]:
        """`{"total", "seen", "counts": {reason: int}, "examples": {reason: [ids]}, "details": {reason: str}}`."""
        reasons = sorted(self.counts)
        return {
            "total": self.total,
            "seen": self.seen,
            "counts": {r: self.counts[r] for r in reasons},
            "examples": {r: list(self.examples.get(r, [])) for r in reasons},
            "details": {r: self.details[r] for r in reasons if r in self.details},
        }

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any], max_examples: int = 5) -> SkipStats:
        """The inverse of `as_dict` (e.g. the counts stored in a checkpoint)."""
        stats = cls(max_examples)
        stats.counts.update({str(r): int(n) for r, n in payload.get("counts", {}).items()})
        stats.examples = {str(r): [str(i) for i in ids] for r, ids in payload.get("examples", {}).items()}
        stats.details = {str(r): str(d) for r, d in payload.get("details", {}).items()}
        stats.seen = int(payload.get("seen", 0))
        return stats

    def summary(self) -> str:
        """One line: `missing_image: 3 (e.g. a, b; a: image file 'x.png' not found), ...`, reasons sorted."""
        parts = []
        for reason in sorted(self.counts):
            example = ", ".join(self.examples.get(reason, []))
            detail = f"; {self.details[reason]}" if reason in self.details else ""
            parts.append(f"{reason}: {self.counts[reason]} (e.g. {example}{detail})")
        return ", ".join(parts)

    def write_json(self, path: str | os.PathLike) -> None:
        """Writes `as_dict()` to `path` (parent folders created), e.g. `<output_dir>/skipped_samples.json`."""
        path = os.fspath(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.as_dict(), f, indent=2)

    def log(self, logger: logging.Logger | None = None, prefix: str = "") -> None:
        """Logs one warning line with the counts (or an info line when nothing was skipped)."""
        logger = logger if logger is not None else logging.getLogger(__name__)
        if not self.total:
            logger.info(f"{prefix}no samples skipped")
            return
        of = f" of {self.seen}" if self.seen else ""
        logger.warning(f"{prefix}skipped {self.total}{of} samples: {self.summary()}")

    def __repr__(self) -> str:
        return f"SkipStats({dict(self.counts)}, seen={self.seen})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SkipStats) and self.as_dict() == other.as_dict()


class BadRecordError(ValueError):
    """Raised in strict mode: the message names the sample id and the reason; `.reason` and `.sample_id` too."""

    def __init__(self, message: str, *, reason: str, sample_id: str):
        super().__init__(message)
        self.reason = reason
        self.sample_id = sample_id


# ----------------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------------


def load_image(
    path_or_image: str | os.PathLike | Image.Image | bytes | Mapping[str, Any],
    *,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    max_aspect_ratio: float | None = MAX_IMAGE_ASPECT_RATIO,
) -> Image.Image:
    """Opens an image as RGB, fully decoded (truncated files fail here, not later in the processor).

    The same function as inference: `processing.processing_sqllava.load_image_rgb`, so training and inference see
    the same pixels. One colour rule, LLaVA's `.convert("RGB")`: transparency is dropped (the colour under the alpha
    channel is kept), L, P, CMYK ... are converted, 16-bit greyscale is rescaled to 8 bits. The size limits are
    checked on the file header, before decoding.

    Args:
        path_or_image: a file path, a `PIL.Image.Image`, encoded bytes, or an HF `Image(decode=False)` dict
            (`{"bytes": ..., "path": ...}`).
        max_pixels: pixel-count limit (`None`: no limit); over it raises `ImageLimitError`.
        max_aspect_ratio: aspect-ratio limit (`None`: no limit); over it raises `ImageLimitError`.

    Raises:
        ImageLimitError: (a `ValueError`) the image is over a size limit.
        ValueError: naming the path when the file is missing, unreadable or corrupt.
    """
    limits = {"max_pixels": max_pixels, "max_aspect_ratio": max_aspect_ratio}
    if isinstance(path_or_image, Mapping):
        data, path = path_or_image.get("bytes"), path_or_image.get("path")
        if data is None and path is None:
            raise ValueError(f"Image dict {sorted(path_or_image)} has neither 'bytes' nor 'path'.")
        return load_image(data if data is not None else path, **limits)
    if not isinstance(path_or_image, (str, os.PathLike, bytes, bytearray, Image.Image)):
        raise TypeError(
            f"`path_or_image` must be a path, bytes, a dict or a PIL.Image, got {type(path_or_image).__name__}."
        )
    return load_image_rgb(path_or_image, name="image", **limits)


def resolve_image_path(image_folder: str, path: str, allow_outside: bool = False) -> str:
    """`path` joined to `image_folder`, refused when it leaves the folder (`../`, an absolute path elsewhere).

    The check is on the normalised path, not on resolved links: an image folder that is itself a link to other
    storage (common for COCO and friends) works; a record that names a file outside the folder does not.

    Args:
        image_folder: the folder the dataset's image paths are relative to.
        path: the record's image path.
        allow_outside: accept paths that leave the folder (`--allow_images_outside_folder`).

    Raises:
        ValueError: naming the path and the folder, when `path` leaves the folder and `allow_outside` is False.
    """
    return _resolve_image_path(image_folder, None if allow_outside else _normalized_folder(image_folder), path)


def _normalized_folder(image_folder: str) -> str:
    return os.path.normpath(os.path.abspath(image_folder))


def _resolve_image_path(image_folder: str, folder: str | None, path: str) -> str:
    """`resolve_image_path` with the folder normalised by the caller (`_normalized_folder(image_folder)`, once per
    dataset load rather than once per image), or `folder=None` to accept paths outside it."""
    joined = os.path.join(image_folder, path)
    if folder is None:
        return joined
    target = os.path.normpath(os.path.abspath(joined))
    if target != folder and not target.startswith(folder.rstrip(os.sep) + os.sep):
        raise ValueError(
            f"image path {path!r} leaves the image folder {image_folder!r} (resolves to {target!r}); fix the record "
            "or allow it (`allow_outside_image_folder=True`, `--allow_images_outside_folder` on the command line)."
        )
    return joined


# ----------------------------------------------------------------------------------------------------------------------
# Record validation and length estimate
# ----------------------------------------------------------------------------------------------------------------------


class _Bad(ValueError):
    """A bad record: `.reason` is one of `SKIP_REASONS`, `.detail` says what is wrong."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _check_utf8(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates: from JSON "\ud800" escapes or undecodable bytes
        raise _Bad("non_utf8", f"{where} is not valid UTF-8 text ({e.reason} at position {e.start})") from None


def normalize_messages(messages: Sequence[Mapping[str, Any]], num_images: int) -> list[dict[str, str]]:
    """Validates a conversation and returns canonical messages (the rules `load_llava_json` applies).

    Roles `human`/`user` -> `user`, `gpt`/`assistant` -> `assistant`; an optional leading `system` message is kept.
    Content may be a string or a list of parts (`{"type": "image"}` / `{"type": "text", "text": ...}`), image parts
    counting as `<image>`. The conversation must alternate user/assistant starting with user and end with an assistant
    answer; every `<image>` must be in the first user turn and their number must equal `num_images`; they are moved
    to its front (`"<image>\\n" * num_images` + the stripped remaining text, the whole stripped: an image-only turn is
    `"<image>"`), as LLaVA's `preprocess_multimodal` does.

    Raises:
        _Bad: with `.reason` one of `SKIP_REASONS` (internal: callers turn it into a skip or a `ValueError`).
    """
    if messages is None:
        raise _Bad("malformed_record", "the record has no conversation ('conversations' / 'messages')")
    if not isinstance(messages, (list, tuple)):
        raise _Bad("malformed_record", f"the conversation is {_describe(messages)}, not a list of turns")
    if not messages:
        raise _Bad("malformed_record", "the conversation is an empty list")
    out: list[dict[str, str]] = []
    token_count = 0
    start = 0
    first = messages[0]
    if isinstance(first, dict) and (first.get("role") or first.get("from")) == "system":
        content = _content_to_text(_message_content(first, 0), 0)[0]
        _check_utf8(content, "turn 0")
        out.append({"role": "system", "content": content})
        start = 1
    turns = messages[start:]
    if not turns:
        raise _Bad("non_alternating", "the conversation has no user turn")
    for t, message in enumerate(turns):
        if not isinstance(message, dict):
            raise _Bad("malformed_record", f"turn {t} is a {type(message).__name__}, not a dict")
        role_key = "role" if "role" in message else "from"
        raw_role = message.get(role_key)
        if raw_role is None:
            raise _Bad("malformed_record", f"turn {t} has no 'from' / 'role' field")
        if not isinstance(raw_role, str):
            raise _Bad("malformed_record", f"turn {t} {role_key!r} is {_describe(raw_role)}, not a string")
        role = _ROLE_MAP.get(raw_role)
        expected = "user" if t % 2 == 0 else "assistant"
        if role != expected:
            raise _Bad("non_alternating", f"turn {t} has role {raw_role!r}, expected {expected!r}")
        content, n_tokens = _content_to_text(_message_content(message, t), t)
        _check_utf8(content, f"turn {t}")
        if n_tokens and t != 0:
            raise _Bad("image_token_mismatch", f"turn {t} contains {IMAGE_TOKEN} (only the first user turn may)")
        token_count += n_tokens
        if t == 0 and n_tokens:
            content = content.replace(IMAGE_TOKEN, "").strip()
            if not content and num_images == 0:
                raise _Bad("empty_text", "turn 0 is empty")
            # An image alone is a valid first turn. LLaVA's `preprocess_multimodal` strips the joined value, so an
            # image-only turn is "<image>" with no newline (`USER: <image> ASSISTANT:`).
            content = ((IMAGE_TOKEN + "\n") * n_tokens + content).strip()
        elif not content.strip():
            raise _Bad("empty_text", f"turn {t} ({role}) is empty")
        out.append({"role": role, "content": content})
    if len(turns) % 2:
        raise _Bad("non_alternating", f"the conversation ends with a user turn ({len(turns)} turns)")
    if token_count != num_images:
        raise _Bad("image_token_mismatch", f"{token_count} {IMAGE_TOKEN} tokens for {num_images} images")
    return out


def _describe(value: Any) -> str:
    """`an int (42)`, `a dict ({...})`: a short description of a value of the wrong type, for error details."""
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name} ({shown})"


def _message_content(message: Mapping[str, Any], turn: int) -> Any:
    if "content" in message:
        return message["content"]
    if "value" in message:
        return message["value"]
    raise _Bad("malformed_record", f"turn {turn} has no 'value' / 'content' field")


def _content_to_text(content: Any, turn: int) -> tuple[str, int]:
    """Returns (text, number of `<image>` placeholders) of a string or a list of typed parts."""
    if isinstance(content, str):
        return content, content.count(IMAGE_TOKEN)
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        texts: list[str] = []
        images = 0
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "image":
                images += 1
            elif kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
                images += part["text"].count(IMAGE_TOKEN)
            else:
                raise _Bad("malformed_record", f"turn {turn} has an unknown content part {_describe(part)}")
        return (IMAGE_TOKEN * images) + "".join(texts), images
    raise _Bad("malformed_record", f"turn {turn} text ('value' / 'content') is {_describe(content)}, not a string")


def estimate_length(messages: Sequence[Mapping[str, Any]], num_images: int) -> int:
    """LLaVA's length estimate for grouping: words over all turns + `IMAGE_LENGTH_ESTIMATE` per image."""
    words = sum(len(m["content"].split()) for m in messages if isinstance(m.get("content"), str))
    return words + IMAGE_LENGTH_ESTIMATE * num_images


def modality_length(messages: Sequence[Mapping[str, Any]], num_images: int) -> int:
    """`estimate_length`, negated for text-only samples (LLaVA's `modality_lengths` convention); never 0."""
    return _signed_length(estimate_length(messages, num_images), num_images)


def _signed_length(length: int, num_images: int) -> int:
    length = max(1, length)
    return length if num_images else -length


# ----------------------------------------------------------------------------------------------------------------------
# LLaVA JSON
# ----------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _alternating_roles(n: int) -> tuple[str, ...]:
    return tuple("user" if i % 2 == 0 else "assistant" for i in range(n))


class _LengthGroupedDataset(Dataset):
    """What the length-grouped sampler and the logs read from a loaded dataset (set by the subclass's loader)."""

    name: str
    skip_stats: SkipStats
    _lengths: list[int]
    _modality_lengths: list[int]

    @property
    def lengths(self) -> list[int]:
        """Estimated length per sample (words + 128 per image), for `group_by_length`."""
        return list(self._lengths)

    @property
    def modality_lengths(self) -> list[int]:
        """Like `lengths` but negative for text-only samples, for `get_modality_length_grouped_indices`."""
        return list(self._modality_lengths)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, num_samples={len(self)}, skipped={self.skip_stats.total})"


class ConversationDataset(_LengthGroupedDataset):
    """List-backed dataset of canonical records, stored compactly (tuples of strings) and rebuilt per access.

    Args:
        records: canonical records (`id`, `images`, `messages`); `index` is reassigned to the position.
        name: a name for logs and mixtures.
        skip_stats: the `SkipStats` of the load that produced the records (kept for reporting).
    """

    def __init__(
        self, records: Sequence[Mapping[str, Any]] = (), name: str = "dataset", skip_stats: SkipStats | None = None
    ):
        self.name = name
        self.skip_stats = skip_stats if skip_stats is not None else SkipStats()
        self._ids: list[str] = []
        self._images: list[tuple] = []
        self._roles: list[tuple[str, ...] | None] = []  # None: the plain user/assistant alternation (most records)
        self._contents: list[tuple[str, ...]] = []
        self._lengths: list[int] = []
        self._modality_lengths: list[int] = []
        for record in records:
            self.append(record["id"], record.get("images") or [], record["messages"])

    def append(self, sample_id: str, images: Sequence[Any], messages: Sequence[Mapping[str, str]]) -> None:
        roles = tuple(m["role"] for m in messages)
        contents = tuple(m["content"] for m in messages)
        self._ids.append(sample_id)
        self._images.append(tuple(images))
        self._roles.append(None if roles == _alternating_roles(len(roles)) else roles)
        self._contents.append(contents)
        # Inlined `estimate_length` (the contents are already a tuple of strings): this loop runs 665K times.
        length = sum(len(c.split()) for c in contents) + IMAGE_LENGTH_ESTIMATE * len(images)
        self._lengths.append(length)
        self._modality_lengths.append(_signed_length(length, len(images)))

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        roles = self._roles[index]
        contents = self._contents[index]
        if roles is None:
            roles = _alternating_roles(len(contents))
        return {
            "id": self._ids[index],
            "index": index,
            "images": list(self._images[index]),
            "messages": [{"role": r, "content": c} for r, c in zip(roles, contents)],
        }

    @property
    def ids(self) -> list[str]:
        return list(self._ids)


class _FileIndex:
    """`exists(path)` answered from one `os.scandir` per folder: 665K `stat` calls cost minutes on network storage."""

    def __init__(self):
        self._dirs: dict[str, frozenset[str] | None] = {}

    def exists(self, path: str) -> bool:
        folder, name = os.path.split(path)
        names = self._dirs.get(folder, False)
        if names is False:
            try:
                with os.scandir(folder or ".") as it:
                    names = frozenset(e.name for e in it if not e.is_dir())
            except OSError:
                names = None
            self._dirs[folder] = names
        return names is not None and name in names


def _read_json_records(json_path: str) -> list[Any]:
    """The records of a JSON list (`.json`) or JSON Lines (`.jsonl`) file; errors name the file and what is wrong."""
    # surrogateescape: undecodable bytes become lone surrogates, caught per record as `non_utf8` instead of failing
    # the whole file in json.load. JSON Lines are streamed: `for line in f` ends lines at newlines only, never at
    # U+2028 / U+2029 / U+0085, which JSON strings may hold unescaped (`str.splitlines` would split a record there).
    with open(json_path, encoding="utf-8", errors="surrogateescape") as f:
        if json_path.endswith(".jsonl"):
            records = []
            size = 0  # characters read, for the empty-file message
            seen_line = False
            for line_number, line in enumerate(f, start=1):
                size += len(line)
                if not line.strip():
                    continue
                seen_line = True
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    records.append(_MalformedLine(line_number, str(e)))
            if not seen_line:
                raise _empty_file_error(json_path, size)
            return records
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise _json_file_error(json_path, e) from None
    if isinstance(data, Mapping):
        # {"id": record} dumps exist; a dict with "conversations" is a single record.
        data = [data] if "conversations" in data else list(data.values())
    if not isinstance(data, list):
        raise TypeError(f"`json_path` {json_path!r} must hold a JSON list of records, got {type(data).__name__}.")
    if not data:
        raise ValueError(f"Data file {json_path!r} holds an empty list: no record to train on.")
    return data


def _empty_file_error(json_path: str, size: int) -> ValueError:
    return ValueError(
        f"Data file {json_path!r} is empty ({size} bytes): expected a JSON list of records, or one record per line "
        "in a .jsonl file."
    )


def _json_file_error(json_path: str, error: json.JSONDecodeError) -> ValueError:
    """The error for a `.json` file that does not parse: empty, JSON Lines under a .json name, or invalid JSON."""
    text = error.doc  # the whole file, as `json.load` read it
    if not text.strip():
        return _empty_file_error(json_path, len(text))
    if error.msg == "Extra data" and _first_line_is_json(text):
        return ValueError(
            f"Data file {json_path!r} holds JSON Lines (one JSON value per line; extra data at line {error.lineno}), "
            "but its name ends in .json, which is read as one JSON list. Rename it to .jsonl, or write the "
            "records as a JSON list."
        )
    return ValueError(
        f"Data file {json_path!r} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}. "
        "Expected a JSON list of records (LLaVA format)."
    )


def _first_line_is_json(text: str) -> bool:
    first = text.lstrip().split("\n", 1)[0]
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return False
    return True


class _MalformedLine:
    def __init__(self, line_number: int, error: str):
        self.line_number = line_number
        self.error = error


def load_llava_json(
    json_path: str | os.PathLike,
    image_folder: str | os.PathLike | None = None,
    *,
    strict: bool = False,
    stats: SkipStats | None = None,
    max_samples: int | None = None,
    check_images: bool = True,
    verify_images: bool = False,
    name: str | None = None,
    allow_outside_image_folder: bool = False,
) -> ConversationDataset:
    """Loads LLaVA / ShareGPT4V conversation JSON (or JSONL) into canonical records, skipping bad records.

    Records look like `{"id", "image": str | [str] (absent for text-only), "conversations": [{"from": "human" |
    "gpt", "value"}]}`. Each record is checked cheaply (no image decoding): image file present, conversation
    alternating human/gpt from human and ending with gpt, no empty turn, as many `<image>` in the first human turn
    as images (none elsewhere), valid UTF-8 text. `<image>` moves to the front of the first human turn.

    Args:
        json_path: the JSON list (or `.jsonl`) of records.
        image_folder: folder the `image` paths are relative to; defaults to the folder of `json_path`.
        strict: raise `ValueError` (naming the sample id and the reason) on the first bad record instead of skipping.
        stats: a `SkipStats` to add the skip counts to (also available as `dataset.skip_stats`).
        max_samples: keep at most this many valid records (the first ones), e.g. for smoke runs.
        check_images: check that image files exist (one directory listing per image folder).
        verify_images: also open each image header with PIL (slow on big datasets; catches unreadable files and
            images over the size limits).
        name: dataset name for logs; defaults to the file name.
        allow_outside_image_folder: accept image paths that leave `image_folder` (`../x.jpg`, an absolute path
            elsewhere); by default such a record is skipped as `image_outside_folder`.

    Returns:
        `ConversationDataset` with `lengths`, `modality_lengths` and `skip_stats`.

    >>> ds = load_llava_json("data/shapes/pretrain.json")  # doctest: +SKIP
    >>> ds[0]["images"]  # doctest: +SKIP
    ['data/shapes/images/train_000000.png']
    """
    json_path = os.fspath(json_path)
    if not os.path.isfile(json_path):
        raise ValueError(f"`json_path` {json_path!r} does not exist.")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 0):
        raise ValueError(f"`max_samples` must be a non-negative integer or None, got {max_samples!r}.")
    image_folder = os.path.dirname(os.path.abspath(json_path)) if image_folder is None else os.fspath(image_folder)
    # Normalised once for the whole file (None: image paths may leave the folder).
    normalized_folder = None if allow_outside_image_folder else _normalized_folder(image_folder)
    name = name or os.path.basename(json_path)
    local_stats = SkipStats()
    files = _FileIndex()
    dataset = ConversationDataset(name=name, skip_stats=local_stats)

    raw_records = _read_json_records(json_path)
    examined = 0
    for position, raw in enumerate(raw_records):
        if max_samples is not None and len(dataset) >= max_samples:
            break
        examined += 1
        raw_records[position] = None  # frees each raw dict once read: peak memory stays near one copy of the data
        sample_id = str(raw.get("id", position)) if isinstance(raw, Mapping) else str(position)
        try:
            if isinstance(raw, _MalformedLine):
                raise _Bad("malformed_record", f"line {raw.line_number} is not JSON ({raw.error})")
            if not isinstance(raw, Mapping):
                raise _Bad("malformed_record", f"record is a {type(raw).__name__}, not a dict")
            _check_utf8(sample_id, "the id")
            images = _record_images(raw.get("image"), image_folder, normalized_folder)
            messages = normalize_messages(raw.get("conversations"), len(images))
            for path in images:
                if check_images and not files.exists(path):
                    raise _Bad("missing_image", f"image file {path!r} not found")
                if verify_images:
                    _verify_image(path)
        except _Bad as bad:
            safe_id = sample_id.encode("utf-8", "backslashreplace").decode("utf-8")
            if strict:
                raise BadRecordError(
                    f"Bad record id={safe_id!r} (position {position} in {json_path}): {bad.reason}: {bad.detail}. "
                    f"Fix or remove the record, or skip and count such records: {_NOT_STRICT}.",
                    reason=bad.reason,
                    sample_id=safe_id,
                ) from None
            local_stats.add(bad.reason, safe_id, detail=bad.detail)
            continue
        dataset.append(sample_id, images, messages)
    local_stats.seen = examined
    del raw_records

    if stats is not None:
        stats.merge(local_stats)
    if local_stats.total:
        local_stats.log(logger, prefix=f"{name}: ")
    return dataset


def _record_images(image: Any, image_folder: str, normalized_folder: str | None) -> list[str]:
    if image is None:
        return []
    paths = [image] if isinstance(image, str) else image
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise _Bad("malformed_record", f"'image' must be a path or a list of paths, got {_describe(image)}")
    for p in paths:
        _check_utf8(p, "the image path")
    resolved = []
    for p in paths:
        try:
            resolved.append(_resolve_image_path(image_folder, normalized_folder, p))
        except ValueError as error:
            raise _Bad("image_outside_folder", str(error)) from None
    return resolved


def _verify_image(path: str) -> None:
    try:
        with Image.open(path) as image:
            check_image_limits(*image.size, name=f"image file {path!r}")
            image.verify()
    except ImageLimitError as e:
        raise _Bad("image_size_limit", str(e)) from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files; each one means "unreadable"
        raise _Bad("unreadable_image", f"image file {path!r} cannot be read ({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------------------------------------------------
# HF datasets (TRL convention: `images` + `messages`)
# ----------------------------------------------------------------------------------------------------------------------


class HFConversationDataset(_LengthGroupedDataset):
    """Canonical view of a `datasets.Dataset` with `images` (or `image`) and `messages` columns.

    Validation and length estimates read only the `messages` column and the number of images (Arrow list lengths),
    never decoding an image; images are decoded on access (`__getitem__`), i.e. in dataloader workers.

    Args:
        dataset: the HF dataset.
        rows: positions in `dataset` of the valid samples.
        lengths, modality_lengths: per valid sample (see `estimate_length`).
        name: name for logs and mixtures.
        skip_stats: the skip counts of the load.
    """

    def __init__(
        self,
        dataset,
        rows: list[int],
        lengths: list[int],
        modality_lengths: list[int],
        name: str,
        skip_stats: SkipStats,
    ):
        self.dataset = dataset
        self.rows = rows
        self._lengths = lengths
        self._modality_lengths = modality_lengths
        self.name = name
        self.skip_stats = skip_stats
        self._image_column = (
            "images" if "images" in dataset.column_names else ("image" if "image" in dataset.column_names else None)
        )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        row = self.dataset[self.rows[index]]
        images = _hf_images(row, self._image_column)
        messages = normalize_messages(row["messages"], len(images))
        sample_id = row.get("id")
        return {
            "id": str(sample_id) if sample_id is not None else f"{self.name}-{self.rows[index]}",
            "index": index,
            "images": images,
            "messages": messages,
        }


def _hf_images(row: Mapping[str, Any], column: str | None) -> list[Any]:
    if column is None:
        return []
    value = row.get(column)
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def load_hf_dataset(
    name_or_path: str | os.PathLike,
    split: str = "train",
    *,
    strict: bool = False,
    stats: SkipStats | None = None,
    max_samples: int | None = None,
    name: str | None = None,
    **load_kwargs: Any,
) -> HFConversationDataset:
    """Loads an HF dataset with `images` + `messages` (TRL's VLM convention) into canonical records.

    Message content may be a string or a list of parts (`{"type": "image"}`, `{"type": "text", "text": ...}`); it is
    normalised to a string, the first user turn starting with `"<image>\\n"` per image. The same checks as
    `load_llava_json` apply (except the image-file check: images live in the dataset).

    Args:
        name_or_path: a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`, a local dataset folder
            (`load_dataset` of a folder of files), or a Hub dataset id.
        split: the split to use (ignored for a folder holding a single `Dataset`).
        strict: raise `ValueError` with the sample id and the reason on the first bad record.
        stats: a `SkipStats` to add the skip counts to.
        max_samples: keep at most this many valid samples.
        name: dataset name for logs; defaults to the last path component.
        load_kwargs: passed to `datasets.load_dataset` (e.g. `name=` config, `revision=`).
    """
    import datasets

    source = os.fspath(name_or_path)
    if os.path.isdir(source) and (
        os.path.isfile(os.path.join(source, "dataset_info.json"))
        or os.path.isfile(os.path.join(source, "dataset_dict.json"))
    ):
        dataset = datasets.load_from_disk(source)
    else:
        dataset = datasets.load_dataset(source, split=split, **load_kwargs)
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"`split` {split!r} not in {source!r}; available splits: {list(dataset)}.")
        dataset = dataset[split]
    return from_hf_dataset(
        dataset, strict=strict, stats=stats, max_samples=max_samples, name=name or os.path.basename(source.rstrip("/"))
    )


def from_hf_dataset(
    dataset,
    *,
    strict: bool = False,
    stats: SkipStats | None = None,
    max_samples: int | None = None,
    name: str = "hf_dataset",
) -> HFConversationDataset:
    """Wraps an in-memory `datasets.Dataset` (see `load_hf_dataset`)."""
    if "messages" not in dataset.column_names:
        raise ValueError(
            f"The dataset needs a 'messages' column (TRL conversational format), got columns {dataset.column_names}."
        )
    image_column = (
        "images" if "images" in dataset.column_names else ("image" if "image" in dataset.column_names else None)
    )
    num_images = _hf_image_counts(dataset, image_column)
    has_id = "id" in dataset.column_names
    local_stats = SkipStats()
    rows, lengths, modality_lengths = [], [], []
    text_columns = dataset.select_columns(["messages", "id"] if has_id else ["messages"])
    for position, row in enumerate(text_columns):
        if max_samples is not None and len(rows) >= max_samples:
            break
        local_stats.seen += 1
        sample_id = str(row["id"]) if has_id else f"{name}-{position}"
        try:
            messages = normalize_messages(row["messages"], num_images[position])
        except _Bad as bad:
            if strict:
                raise BadRecordError(
                    f"Bad record id={sample_id!r} (row {position} of {name}): {bad.reason}: {bad.detail}. "
                    f"Fix or remove the record, or skip and count such records: {_NOT_STRICT}.",
                    reason=bad.reason,
                    sample_id=sample_id,
                ) from None
            local_stats.add(bad.reason, sample_id, detail=bad.detail)
            continue
        rows.append(position)
        lengths.append(estimate_length(messages, num_images[position]))
        modality_lengths.append(_signed_length(lengths[-1], num_images[position]))
    if stats is not None:
        stats.merge(local_stats)
    if local_stats.total:
        local_stats.log(logger, prefix=f"{name}: ")
    return HFConversationDataset(dataset, rows, lengths, modality_lengths, name, local_stats)


def _hf_image_counts(dataset, column: str | None) -> list[int]:
    """Images per row from the Arrow column (no decoding): list length for `images`, 0/1 for a single `image`."""
    if column is None:
        return [0] * len(dataset)
    import pyarrow.compute as pc

    counts: list[int] = []
    for batch in dataset.select_columns([column]).with_format("arrow").iter(batch_size=10_000):
        array = batch[column]
        if hasattr(array.type, "value_type") or str(array.type).startswith(("list", "large_list")):
            lengths = pc.fill_null(pc.list_value_length(array), 0)
            counts.extend(lengths.to_pylist())
        else:
            counts.extend(int(v) for v in pc.is_valid(array).to_pylist())
    return counts


# ----------------------------------------------------------------------------------------------------------------------
# Mixtures
# ----------------------------------------------------------------------------------------------------------------------


class MixtureDataset(Dataset):
    """A fixed, seeded mixture of several datasets with sampling weights.

    Semantics: the mixture has `num_samples` records (default: the sum of the source sizes). Source `i` contributes
    `n_i` records, `n_i` proportional to `weights[i]` (largest-remainder rounding, so the `n_i` sum to
    `num_samples` exactly). A source is drawn without replacement: whole passes over a seeded permutation of it,
    then a seeded subset for the remainder, so upsampling repeats every record before any record appears a third
    time and downsampling never repeats one. The concatenated draws are shuffled with the same seed. The composition
    is fixed for a seed (identical on every rank and across epochs; the sampler shuffles per epoch).

    Each record's `id` becomes `"<source name>/<source id>"`, and `index` the position in the mixture (so repeated
    records get their own self-questioning draws).

    Args:
        sources: `{name: dataset}` or `[(name, dataset), ...]`; datasets yield canonical records.
        weights: relative weights (a sequence aligned with `sources` or a `{name: weight}` mapping); `None` means
            proportional to the source sizes (plain concatenation, shuffled).
        seed: seed of the draw and the shuffle.
        num_samples: total number of records; defaults to the sum of the source sizes.

    >>> mix = MixtureDataset({"llava": llava, "shapes": shapes}, weights=[0.9, 0.1], seed=0)  # doctest: +SKIP
    """

    def __init__(
        self,
        sources: Mapping[str, Dataset] | Sequence[tuple[str, Dataset]],
        weights: Sequence[float] | Mapping[str, float] | None = None,
        seed: int = 0,
        num_samples: int | None = None,
    ):
        items = list(sources.items()) if isinstance(sources, Mapping) else list(sources)
        if not items:
            raise ValueError("`sources` is empty; pass at least one (name, dataset).")
        names = [n for n, _ in items]
        if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"`sources` names must be distinct non-empty strings, got {names}.")
        self.names = names
        self.sources = [d for _, d in items]
        sizes = [len(d) for d in self.sources]
        if weights is None:
            weights = [float(s) for s in sizes]
        elif isinstance(weights, Mapping):
            missing = set(names) - set(weights)
            if missing or set(weights) - set(names):
                raise ValueError(f"`weights` keys {sorted(weights)} must equal the source names {sorted(names)}.")
            weights = [float(weights[n]) for n in names]
        else:
            weights = [float(w) for w in weights]
        if len(weights) != len(names):
            raise ValueError(f"`weights` has {len(weights)} values for {len(names)} sources; give one per source.")
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"`weights` must be finite, non-negative and not all zero, got {weights}.")
        for name, size, w in zip(names, sizes, weights):
            if size == 0 and w > 0:
                raise ValueError(f"Source {name!r} is empty but has weight {w}; give it weight 0 or remove it.")
        num_samples = sum(sizes) if num_samples is None else num_samples
        if not isinstance(num_samples, int) or num_samples < 0:
            raise ValueError(f"`num_samples` must be a non-negative integer, got {num_samples!r}.")
        self.weights = [w / sum(weights) for w in weights]
        self.seed = seed
        self.counts = _largest_remainder([w * num_samples for w in self.weights], num_samples)

        rng = random.Random(f"mixture-{seed}")
        entries: list[tuple[int, int]] = []
        for s, (size, count) in enumerate(zip(sizes, self.counts)):
            full, rest = divmod(count, size) if size else (0, 0)
            for _ in range(full):
                order = list(range(size))
                rng.shuffle(order)
                entries.extend((s, i) for i in order)
            entries.extend((s, i) for i in rng.sample(range(size), rest))
        rng.shuffle(entries)
        self._source_of = [s for s, _ in entries]
        self._row_of = [i for _, i in entries]
        self.skip_stats = SkipStats()
        for d in self.sources:
            if isinstance(getattr(d, "skip_stats", None), SkipStats):
                self.skip_stats.merge(d.skip_stats)

    def __len__(self) -> int:
        return len(self._row_of)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        s = self._source_of[index]
        record = dict(self.sources[s][self._row_of[index]])
        record["id"] = f"{self.names[s]}/{record['id']}"
        record["index"] = index
        return record

    def source_counts(self) -> dict[str, int]:
        """Records per source in the mixture."""
        return dict(zip(self.names, self.counts))

    def _source_lengths(self, s: int, attribute: str) -> list[int]:
        values = getattr(self.sources[s], attribute, None)
        if values is None:
            # A source without precomputed lengths: estimate from its records (may decode images).
            fn = estimate_length if attribute == "lengths" else modality_length
            values = [fn(r["messages"], len(r["images"])) for r in self.sources[s]]
        return list(values)

    @property
    def lengths(self) -> list[int]:
        per_source = [self._source_lengths(s, "lengths") for s in range(len(self.sources))]
        return [per_source[s][i] for s, i in zip(self._source_of, self._row_of)]

    @property
    def modality_lengths(self) -> list[int]:
        per_source = [self._source_lengths(s, "modality_lengths") for s in range(len(self.sources))]
        return [per_source[s][i] for s, i in zip(self._source_of, self._row_of)]


def _largest_remainder(quotas: Sequence[float], total: int) -> list[int]:
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(quotas)), key=lambda i: (quotas[i] - counts[i], -i), reverse=True)
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


# ----------------------------------------------------------------------------------------------------------------------
# Length-grouped sampling (LLaVA's group_by_modality_length)
# ----------------------------------------------------------------------------------------------------------------------


def _split_to_even_chunks(indices: list[int], lengths: Sequence[int], num_chunks: int) -> list[list[int]]:
    """Splits a megabatch into `num_chunks` per-rank batches of equal size and balanced total length (LLaVA)."""
    if len(indices) % num_chunks != 0:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0.0] * num_chunks
    for index in indices:
        shortest = totals.index(min(totals))
        chunks[shortest].append(index)
        totals[shortest] += lengths[index]
        if len(chunks[shortest]) == per_chunk:
            totals[shortest] = float("inf")
    return chunks


def get_length_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator | None = None
) -> list[int]:
    """LLaVA's length grouping: random megabatches of `world_size * batch_size`, each sorted by length (longest
    first) and split into `world_size` batches of balanced length."""
    indices = torch.randperm(len(lengths), generator=generator).tolist()
    megabatch_size = world_size * batch_size
    megabatches = [indices[i : i + megabatch_size] for i in range(0, len(lengths), megabatch_size)]
    megabatches = [sorted(m, key=lambda i: lengths[i], reverse=True) for m in megabatches]
    return [i for m in megabatches for chunk in _split_to_even_chunks(m, lengths, world_size) for i in chunk]


def get_modality_length_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator | None = None
) -> list[int]:
    """LLaVA's `group_by_modality_length` order: multimodal (length > 0) and text-only (length < 0) samples are
    length-grouped separately into megabatches of `world_size * batch_size`, the megabatches shuffled together; the
    two leftover partial megabatches form one final megabatch.

    Unlike the reference, `generator` drives every random draw (the reference used the global RNG for the
    per-modality shuffles), so the same generator state gives the same order on every rank.

    Args:
        lengths: `modality_lengths` (positive multimodal, negative text-only, never 0).
        batch_size: per-device batch size (times gradient accumulation steps, as LLaVA's trainer passes it).
        world_size: number of processes.
        generator: a seeded `torch.Generator`.
    """
    if any(length == 0 for length in lengths):
        raise ValueError("`lengths` contains 0; use modality lengths (positive multimodal, negative text-only).")
    if all(length > 0 for length in lengths) or all(length < 0 for length in lengths):
        return get_length_grouped_indices([abs(x) for x in lengths], batch_size, world_size, generator=generator)
    mm_indices = [i for i, x in enumerate(lengths) if x > 0]
    mm_lengths = [lengths[i] for i in mm_indices]
    lang_indices = [i for i, x in enumerate(lengths) if x < 0]
    lang_lengths = [-lengths[i] for i in lang_indices]
    mm_order = [mm_indices[i] for i in get_length_grouped_indices(mm_lengths, batch_size, world_size, generator)]
    lang_order = [lang_indices[i] for i in get_length_grouped_indices(lang_lengths, batch_size, world_size, generator)]
    megabatch_size = world_size * batch_size
    mm_megabatches = [mm_order[i : i + megabatch_size] for i in range(0, len(mm_order), megabatch_size)]
    lang_megabatches = [lang_order[i : i + megabatch_size] for i in range(0, len(lang_order), megabatch_size)]
    additional = mm_megabatches[-1] + lang_megabatches[-1]
    megabatches = mm_megabatches[:-1] + lang_megabatches[:-1]
    permutation = torch.randperm(len(megabatches), generator=generator).tolist()
    megabatches = [megabatches[i] for i in permutation]
    if additional:
        megabatches.append(sorted(additional))
    return [i for m in megabatches for i in m]


class ModalityLengthGroupedSampler(Sampler[int]):
    """Sampler yielding LLaVA's `group_by_modality_length` order, deterministic in (`seed`, epoch).

    It yields the *global* order (all ranks): every rank builds the same sampler and gets the same order. With
    accelerate (as in `Trainer`), the dataloader built on this sampler with the per-device batch size is sharded by
    `BatchSamplerShard`, which gives batch `k` to rank `k % world_size`: each megabatch of
    `world_size * batch_size` consecutive indices is split into `world_size` length-balanced chunks of
    `batch_size`, so rank `r` receives chunk `r` of every megabatch, and batches of one step never mix modalities
    (except the final leftover megabatch). Pass `batch_size = per_device_batch_size` and
    `world_size = num_processes * gradient_accumulation_steps` to group a whole optimizer step, as LLaVA does.
    accelerate's `DataLoaderShard.set_epoch` (called by `Trainer` every epoch) forwards to `set_epoch`; call it
    yourself in a hand-written loop.

    Args:
        lengths: per-sample modality lengths (`dataset.modality_lengths`); with `group_by_modality=False`, plain
            positive lengths.
        batch_size: per-device batch size.
        world_size: number of chunks per megabatch (processes x gradient accumulation steps).
        seed: base seed; epoch `e` uses `seed + e`.
        group_by_modality: `False` gives plain length grouping (LLaVA's `group_by_length`).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        world_size: int = 1,
        seed: int = 0,
        group_by_modality: bool = True,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"`world_size` must be a positive integer, got {world_size!r}.")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
        self.group_by_modality = group_by_modality
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def indices(self, epoch: int | None = None) -> list[int]:
        """The order of `epoch` (default: the current epoch)."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + (self.epoch if epoch is None else epoch))
        if self.group_by_modality:
            return get_modality_length_grouped_indices(self.lengths, self.batch_size, self.world_size, generator)
        return get_length_grouped_indices([abs(x) for x in self.lengths], self.batch_size, self.world_size, generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())


__all__ = [
    "IMAGE_TOKEN",
    "SKIP_REASONS",
    "BadRecordError",
    "ConversationDataset",
    "HFConversationDataset",
    "MixtureDataset",
    "ModalityLengthGroupedSampler",
    "SkipStats",
    "estimate_length",
    "from_hf_dataset",
    "get_length_grouped_indices",
    "get_modality_length_grouped_indices",
    "load_hf_dataset",
    "load_image",
    "load_llava_json",
    "modality_length",
    "normalize_messages",
    "resolve_image_path",
]
