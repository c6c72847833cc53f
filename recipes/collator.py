"""The self-questioning collator of SQ-LLaVA training: canonical records in, a padded (or packed) training batch out.

[`SelfQuestioningCollator`] draws which user turns become `vuser` turns (the self-questioning objective, see
[`vuser_draw`]), builds labels from the token roles of the rendered chat template
(`SQLlavaProcessor.tokenize_conversation`), truncates without ever cutting an image, and opens images lazily. With
`padding_free=True` it packs the batch into one row instead of padding it (TRL's `padding_free` semantics). It needs
only numpy, torch, transformers and PIL: importing this module never imports TRL, so the collator also serves plain
PyTorch loops and other trainers. The TRL side (config and trainer) lives in `recipes/trainer.py`.

Example:

```python
>>> from recipes.collator import SelfQuestioningCollator
>>> collator = SelfQuestioningCollator(processor, sq_ratio=0.5, seed=0, max_length=2048)
>>> batch = collator(records)  # input_ids, attention_mask, labels, question_mask, pixel_values
```
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from processing.processing_sqllava import MAX_IMAGE_ASPECT_RATIO, MAX_IMAGE_PIXELS, ImageLimitError
from recipes.data import SkipStats, load_image

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Token roles returned by `SQLlavaProcessor.tokenize_conversation`.
ROLE_UNTRAINED, ROLE_ANSWER, ROLE_QUESTION = 0, 1, 2

MODES = ("finetune", "pretrain")
_PADDING_SIDES = ("right", "left")

# Skip reasons counted by the collator (the load-time reasons live in `recipes/data.py`).
SKIP_IMAGE_TRUNCATED = "image_tokens_truncated"
SKIP_NO_LABELS_AFTER_TRUNCATION = "no_labels_after_truncation"
SKIP_UNREADABLE_IMAGE = "unreadable_image"
SKIP_IMAGE_SIZE_LIMIT = "image_size_limit"
SKIP_MULTI_TURN_IN_PRETRAIN = "multi_turn_in_pretrain"


def vuser_draw(seed: int, epoch: int, index: int, num_turns: int, sq_ratio: float) -> list[bool]:
    """Which of `num_turns` later user turns of sample `index` become `vuser` turns in `epoch`.

    The draw depends only on `(seed, epoch, index)`: numpy's `SeedSequence([seed, epoch, index])` seeds a PCG64
    generator and turn `k` is converted when the `k`-th uniform number is below `sq_ratio`. No global RNG, rank, worker
    id or call order enters, so every rank, every dataloader worker and a resumed run make the same draw.

    Args:
        seed: the run's data seed (`SQLlavaSFTConfig.data_seed`, else `seed`).
        epoch: the epoch the sample is drawn in (0-based).
        index: the sample's position in its dataset (`record["index"]`).
        num_turns: user turns after the first one.
        sq_ratio: probability that each of them becomes a `vuser` turn.
    """
    if num_turns <= 0 or sq_ratio <= 0.0:
        return [False] * max(num_turns, 0)
    if sq_ratio >= 1.0:
        return [True] * num_turns
    uniforms = np.random.default_rng([seed, epoch, index]).random(num_turns)
    return (uniforms < sq_ratio).tolist()


@dataclass
class SelfQuestioningCollator:
    """Collate canonical records into a self-questioning training batch.

    For every multi-turn image conversation, each user turn after the first is rendered as a `vuser` turn with
    probability `sq_ratio`, independently per turn, re-drawn every epoch (see [`vuser_draw`]: the draw depends on
    `(seed, epoch, record["index"])` only, so it is identical on every rank and after resuming). The first user turn
    (the one carrying `<image>`) is never converted; single-turn and text-only samples get no `vuser` turn. Labels
    cover every assistant answer and every `vuser` question, each with its closing `</s>` (token roles 1 and 2 of
    `processor.tokenize_conversation`); everything else is -100.

    Truncation to `max_length` keeps the start of the sequence. A sample whose image tokens would be cut, or which
    would keep no labelled token, is dropped, logged and counted in `stats` (or, with `strict=True`, raises a
    `ValueError` naming the sample id). So is a sample whose image cannot be read or is over the size limits
    (`image_size_limit`), and, in pretrain mode (plain captions: one caption per image), a multi-turn record
    (`multi_turn_in_pretrain`: joining its answers into one caption would train text nobody wrote). A batch whose
    samples were all
    dropped becomes one row of `pad_to_multiple_of` (at least one) padding tokens with every label at -100: it
    contributes exactly zero to the loss and to the gradients, and keeps every rank stepping together under DDP.

    With `padding_free=True` the kept samples are concatenated, in order, into a single row with no padding at all
    (TRL's `padding_free`): `position_ids` restart at 0 at each sample and there is no `attention_mask`, which is how
    transformers recognises packed sequences and keeps attention within each sample (SDPA and eager build a
    block-diagonal causal mask from `position_ids`; flash-attention 2/3 run varlen on `cu_seq_lens_q/k` and
    `max_length_q/k`, returned too so that they need no device-to-host sync). Each sample's first label is -100, so
    no token is predicted across a boundary; `pixel_values` keep the order of the samples. The loss and every gradient
    equal those of the padded batch (tests/test_packing.py). The model must run without a KV cache (`use_cache=False`,
    as `SQLlavaTrainer` does): with a cache, transformers does not look for packed sequences. Attention cost: flash
    varlen computes only the per-sample blocks, but SDPA and eager compute the whole `N x N` score matrix of the
    packed row (N = the batch's total tokens), so on those the packed batch pays attention for `N^2` instead of
    `B x longest^2`.

    Args:
        processor (`SQLlavaProcessor`):
            Provides `tokenize_conversation(messages, mode=, system_prompt=)`, `image_processor`, `tokenizer` (with a
            pad token) and the image token.
        sq_ratio (`float`, *optional*, defaults to 0.5):
            Probability that a user turn after the first becomes a `vuser` turn (finetune mode only).
        seed (`int`, *optional*, defaults to 0):
            Seed of the vuser draw.
        max_length (`int`, *optional*, defaults to 2048):
            Maximum sequence length before padding; `None` disables truncation.
        mode (`str`, *optional*, defaults to `"finetune"`):
            `"finetune"` (stage 2: chat format with the self-questioning system prompt) or `"pretrain"` (stage 1:
            plain `<image>` + caption format, no vuser turns).
        pad_to_multiple_of (`int`, *optional*, defaults to 8):
            Pad the sequence length to a multiple of this (`None` or 1: no rounding).
        strict (`bool`, *optional*, defaults to `False`):
            Raise on the first sample that would be dropped instead of skipping it.
        padding_side (`str`, *optional*, defaults to `"right"`):
            `"right"` for training; `"left"` is available for batched generation-style evaluation.
        system_prompt (`str`, *optional*):
            System prompt in finetune mode; defaults to the processor module's `SQ_SYSTEM_PROMPT`.
        stats (`SkipStats`, *optional*):
            Where dropped samples are counted; a fresh `recipes.data.SkipStats` by default. With dataloader workers,
            each worker counts in its own copy, which never reaches the main process: use `report_skips`.
        report_skips (`bool`, *optional*, defaults to `False`):
            Add `skip_report` to the batch: `{"seen": records collated, "skipped": [(reason, sample_id, detail)]}`.
            It travels with the batch out of dataloader workers, so the trainer counts every drop of the run.
        max_image_pixels (`int`, *optional*, defaults to `MAX_IMAGE_PIXELS`):
            Images with more pixels are dropped (`image_size_limit`) before they are decoded; `None`: no limit.
        max_image_aspect_ratio (`float`, *optional*, defaults to `MAX_IMAGE_ASPECT_RATIO`):
            Images more elongated than this are dropped (`image_size_limit`); `None`: no limit.
        return_sample_ids (`bool`, *optional*, defaults to `False`):
            Add `sample_ids` (the ids of the kept records) to the batch, for auditing which rank trained on what.
        padding_free (`bool`, *optional*, defaults to `False`):
            Pack the batch into one row with `position_ids` instead of padding it (see above); `pad_to_multiple_of`
            is then not applied and `padding_side` must be `"right"`.

    Example:

    ```python
    >>> collator = SelfQuestioningCollator(processor, sq_ratio=0.5, seed=0, max_length=2048)
    >>> collator.set_epoch(0)
    >>> batch = collator([{"id": "a", "index": 0, "images": ["cat.jpg"], "messages": [
    ...     {"role": "user", "content": "<image>\\nWhat is it?"}, {"role": "assistant", "content": "A cat."},
    ...     {"role": "user", "content": "What colour?"}, {"role": "assistant", "content": "Grey."}]}])
    >>> sorted(batch)
    ['attention_mask', 'input_ids', 'labels', 'pixel_values', 'question_mask']
    ```
    """

    processor: Any
    sq_ratio: float = 0.5
    seed: int = 0
    max_length: int | None = 2048
    mode: str = "finetune"
    pad_to_multiple_of: int | None = 8
    strict: bool = False
    padding_side: str = "right"
    system_prompt: str | None = None
    stats: Any = None
    return_sample_ids: bool = False
    report_skips: bool = False
    max_image_pixels: int | None = MAX_IMAGE_PIXELS
    max_image_aspect_ratio: float | None = MAX_IMAGE_ASPECT_RATIO
    padding_free: bool = False
    epoch: int = field(default=0, init=False)

    def __post_init__(self):
        if not 0.0 <= float(self.sq_ratio) <= 1.0:
            raise ValueError(f"`sq_ratio` must be in [0, 1], got {self.sq_ratio}. Use 0.5 as in SQ-LLaVA.")
        if self.mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {self.mode!r}.")
        if self.padding_side not in _PADDING_SIDES:
            raise ValueError(f"`padding_side` must be one of {_PADDING_SIDES}, got {self.padding_side!r}.")
        if self.max_length is not None and int(self.max_length) < 1:
            raise ValueError(f"`max_length` must be a positive int or None, got {self.max_length}.")
        if self.pad_to_multiple_of is not None and int(self.pad_to_multiple_of) < 1:
            raise ValueError(f"`pad_to_multiple_of` must be a positive int or None, got {self.pad_to_multiple_of}.")
        if self.padding_free and self.padding_side != "right":
            raise ValueError(
                f"`padding_free=True` packs the batch into one row, which has no padding side; got "
                f"padding_side={self.padding_side!r}. Use padding_side='right' (or padding_free=False)."
            )
        if not hasattr(self.processor, "tokenize_conversation"):
            raise TypeError(
                f"`processor` must be an `SQLlavaProcessor` (with `tokenize_conversation`), got "
                f"{type(self.processor).__name__}."
            )
        tokenizer = self.processor.tokenizer
        if tokenizer.pad_token_id is None:
            raise ValueError("The processor's tokenizer has no pad token; set `processor.tokenizer.pad_token` first.")
        self._pad_token_id = int(tokenizer.pad_token_id)
        image_token_id = getattr(self.processor, "image_token_id", None)
        if image_token_id is None:
            image_token_id = tokenizer.convert_tokens_to_ids(getattr(self.processor, "image_token", "<image>"))
        self._image_token_id = int(image_token_id)
        if self.mode == "finetune" and self.system_prompt is None:
            self.system_prompt = self._processor_constant("SQ_SYSTEM_PROMPT")
        if self.stats is None:
            self.stats = SkipStats()

    def _processor_constant(self, name: str) -> str:
        import importlib

        module = importlib.import_module(type(self.processor).__module__)
        if not hasattr(module, name):
            module = importlib.import_module("processing.processing_sqllava")
        return getattr(module, name)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose vuser draw the next batches use (the trainer calls it at every epoch start)."""
        self.epoch = int(epoch)

    # ---- per-sample work ----

    def convert_messages(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """The record's messages with the drawn user turns renamed `vuser` (a new list; the record is untouched)."""
        messages = record["messages"]
        if self.mode != "finetune" or self.sq_ratio <= 0.0 or not record.get("images"):
            return messages
        user_positions = [i for i, message in enumerate(messages) if message["role"] == "user"]
        later = user_positions[1:]  # the first user turn (with `<image>`) is never converted
        if not later:
            return messages
        if "index" not in record:
            raise ValueError(
                f"Record {record.get('id')!r} has no 'index': the seeded vuser draw needs the sample's position in "
                "its dataset. Load records with `recipes.data` (which adds it) or add an 'index' field."
            )
        draws = vuser_draw(self.seed, self.epoch, int(record["index"]), len(later), self.sq_ratio)
        if not any(draws):
            return messages
        converted = list(messages)
        for position, to_vuser in zip(later, draws):
            if to_vuser:
                converted[position] = {**messages[position], "role": "vuser"}
        return converted

    def _skip(self, record: dict[str, Any], reason: str, detail: str) -> None:
        sample_id = record.get("id", record.get("index"))
        if self.strict:
            raise ValueError(
                f"Sample {sample_id!r}: {reason} ({detail}). Fix or remove it, or skip and count such samples "
                "(strict=False in Python, `--strict_data false` on the command line)."
            )
        self.stats.add(reason, sample_id, detail=detail)
        self._batch_skips.append((reason, str(sample_id), detail))
        logger.warning("Skipping sample %r: %s (%s).", sample_id, reason, detail)

    def _encode(self, record: dict[str, Any]) -> tuple[list[int], list[int]] | None:
        if self.mode == "pretrain":
            answers = sum(1 for message in record["messages"] if message["role"] == "assistant")
            if answers > 1:
                # LLaVA's plain format is one caption per image (its `preprocess_plain` asserts two turns).
                self._skip(
                    record,
                    SKIP_MULTI_TURN_IN_PRETRAIN,
                    f"{answers} answers; stage 1 trains one caption per image, use the record in stage 2",
                )
                return None
        messages = self.convert_messages(record)
        if self.mode == "finetune":
            encoded = self.processor.tokenize_conversation(messages, mode="chat", system_prompt=self.system_prompt)
        else:
            encoded = self.processor.tokenize_conversation(messages, mode="plain")
        input_ids, roles = encoded["input_ids"], encoded["token_roles"]
        if self.max_length is not None and len(input_ids) > self.max_length:
            cut = self.max_length
            # Keeping the start never drops a text token before an image, so only image tokens at or after the cut
            # can be lost: a partial (or missing) image would no longer match its features.
            if self._image_token_id in input_ids[cut:]:
                self._skip(
                    record,
                    SKIP_IMAGE_TRUNCATED,
                    f"{len(input_ids)} tokens, max_length {self.max_length} would cut image tokens",
                )
                return None
            input_ids, roles = input_ids[:cut], roles[:cut]
            if not any(roles):
                self._skip(
                    record,
                    SKIP_NO_LABELS_AFTER_TRUNCATION,
                    f"{len(encoded['input_ids'])} tokens, no trained token left within max_length {self.max_length}",
                )
                return None
        return input_ids, roles

    def _load_images(self, record: dict[str, Any]) -> list[Any] | None:
        images = []
        limits = {"max_pixels": self.max_image_pixels, "max_aspect_ratio": self.max_image_aspect_ratio}
        for image in record.get("images") or []:
            try:
                images.append(load_image(image, **limits))
            except ImageLimitError as error:
                self._skip(record, SKIP_IMAGE_SIZE_LIMIT, str(error))
                return None
            except (ValueError, OSError) as error:
                self._skip(record, SKIP_UNREADABLE_IMAGE, str(error))  # the error names the file
                return None
        return images

    # ---- batch ----

    def __call__(self, records: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        self._batch_skips: list[tuple[str, str, str]] = []
        batch = self._collate(records)
        if self.report_skips:
            batch["skip_report"] = {"seen": len(records), "skipped": self._batch_skips}
        return batch

    def _collate(self, records: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences: list[tuple[list[int], list[int]]] = []
        batch_images: list[Any] = []
        kept_ids: list[str] = []
        for record in records:
            encoded = self._encode(record)
            if encoded is None:
                continue
            images = self._load_images(record)
            if images is None:
                continue
            sequences.append(encoded)
            batch_images.extend(images)
            kept_ids.append(str(record.get("id")))

        if not sequences:
            return self._empty_batch(len(records))

        batch = self._pack(sequences) if self.padding_free else self._pad(sequences)
        if batch_images:
            # Through the processor: the bounded pad-and-resize, bit-identical to the image processor's own.
            batch["pixel_values"] = self.processor(
                images=batch_images,
                return_tensors="pt",
                max_image_pixels=self.max_image_pixels,
                max_image_aspect_ratio=self.max_image_aspect_ratio,
            )["pixel_values"]
        if self.return_sample_ids:
            batch["sample_ids"] = kept_ids
        return batch

    def _pad(self, sequences: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        longest = max(len(ids) for ids, _ in sequences)
        multiple = self.pad_to_multiple_of or 1
        length = -(-longest // multiple) * multiple
        input_ids = np.full((len(sequences), length), self._pad_token_id, dtype=np.int64)
        labels = np.full((len(sequences), length), IGNORE_INDEX, dtype=np.int64)
        attention_mask = np.zeros((len(sequences), length), dtype=np.int64)
        question_mask = np.zeros((len(sequences), length), dtype=bool)
        for row, (ids, roles) in enumerate(sequences):
            ids_array = np.asarray(ids, dtype=np.int64)
            roles_array = np.asarray(roles, dtype=np.int8)
            span = slice(0, len(ids)) if self.padding_side == "right" else slice(length - len(ids), length)
            input_ids[row, span] = ids_array
            attention_mask[row, span] = 1
            labels[row, span] = np.where(roles_array != ROLE_UNTRAINED, ids_array, IGNORE_INDEX)
            question_mask[row, span] = roles_array == ROLE_QUESTION
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "labels": torch.from_numpy(labels),
            "question_mask": torch.from_numpy(question_mask),
        }

    def _pack(self, sequences: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        ids = np.concatenate([np.asarray(ids, dtype=np.int64) for ids, _ in sequences])
        roles = np.concatenate([np.asarray(roles, dtype=np.int8) for _, roles in sequences])
        lengths = np.asarray([len(sequence_ids) for sequence_ids, _ in sequences], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)])
        position_ids = np.arange(len(ids), dtype=np.int64) - np.repeat(starts[:-1], lengths)
        labels = np.where(roles != ROLE_UNTRAINED, ids, IGNORE_INDEX)
        # The first token of a sample would be predicted from the previous sample's last token: never trained. (It is
        # BOS, untrained anyway; this keeps the guarantee independent of the chat template.)
        labels[starts[:-1]] = IGNORE_INDEX
        cu_seq_lens = torch.from_numpy(starts.astype(np.int32))
        max_length = int(lengths.max())
        return {
            "input_ids": torch.from_numpy(ids)[None],
            "position_ids": torch.from_numpy(position_ids)[None],
            "labels": torch.from_numpy(labels)[None],
            "question_mask": torch.from_numpy(roles == ROLE_QUESTION)[None],
            # Flash-attention varlen boundaries (transformers' FlashAttentionKwargs); SDPA and eager ignore them.
            "cu_seq_lens_q": cu_seq_lens,
            "cu_seq_lens_k": cu_seq_lens.clone(),
            "max_length_q": max_length,
            "max_length_k": max_length,
        }

    def _empty_batch(self, num_records: int) -> dict[str, torch.Tensor]:
        logger.warning(
            "All %d samples of a batch were dropped; it becomes one all-ignored row that adds zero loss.", num_records
        )
        length = max(self.pad_to_multiple_of or 1, 1)
        return {
            "input_ids": torch.full((1, length), self._pad_token_id, dtype=torch.long),
            # Attended (not masked) so that no attention row is fully masked, which some kernels turn into NaN.
            "attention_mask": torch.ones((1, length), dtype=torch.long),
            "labels": torch.full((1, length), IGNORE_INDEX, dtype=torch.long),
            "question_mask": torch.zeros((1, length), dtype=torch.bool),
        }
