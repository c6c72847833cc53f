"""SelfQuestioningCollator: the vuser draw, labels from token roles, truncation, bad samples, padding.

Labels are checked against independent references: LLaVA-1.5's own `preprocess_v1` label construction (round
splitting and tokenizer length arithmetic, re-implemented here from the reference code) for `sq_ratio=0`, and the
decoded strings of every labelled span for `sq_ratio=1`, with the real Llama vocabulary where the fixture exists.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recipes.collator import (
    IGNORE_INDEX,
    SKIP_IMAGE_TRUNCATED,
    SKIP_NO_LABELS_AFTER_TRUNCATION,
    SKIP_UNREADABLE_IMAGE,
    SelfQuestioningCollator,
    vuser_draw,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

CONVERSATION = [
    ("What shape is in the image?", "A red circle."),
    ("What colour is the circle?", "It is red."),
    ("Where is it located?", "In the top left corner of the picture."),
    ("Is there a square?", "No, there is no square."),
]


def make_record(index=0, turns=CONVERSATION, image=True, sample_id=None, images=None):
    messages = []
    for turn, (question, answer) in enumerate(turns):
        content = ("<image>\n" + question) if (turn == 0 and image) else question
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
    if images is None:
        images = [Image.new("RGB", (40, 30), (200, 30, 30))] if image else []
    return {"id": sample_id or f"sample-{index}", "index": index, "images": images, "messages": messages}


def labelled_spans(labels: torch.Tensor, question_mask: torch.Tensor) -> list[tuple[list[int], bool]]:
    """Maximal runs of consecutive labelled tokens, each with whether it is a question span."""
    spans, current, current_q = [], [], None
    for label, is_q in zip(labels.tolist(), question_mask.tolist()):
        if label == IGNORE_INDEX:
            if current:
                spans.append((current, current_q))
            current, current_q = [], None
            continue
        if current and is_q != current_q:
            spans.append((current, current_q))
            current = []
        current.append(label)
        current_q = is_q
    if current:
        spans.append((current, current_q))
    return spans


# ---- LLaVA-1.5 reference (haotian-liu/LLaVA, llava/train/train.py: preprocess_v1 + tokenizer_image_token) ----


def legacy_encode(text, tokenizer):
    """What LLaVA-1.5's slow `LlamaTokenizer(legacy=True)` returns: BOS, then every text segment between `</s>`
    special tokens encoded on its own by SentencePiece (so each gets the "▁" dummy prefix: `</s>USER` -> `</s> ▁US ER`).
    """
    ids = [tokenizer.bos_token_id]
    for i, segment in enumerate(text.split("</s>")):
        if i:
            ids.append(tokenizer.eos_token_id)
        if segment:
            ids.extend(tokenizer(segment, add_special_tokens=False).input_ids)
    return ids


def tokenizer_image_token(prompt, tokenizer, image_token_index):
    chunks = [legacy_encode(chunk, tokenizer) for chunk in prompt.split("<image>")]
    input_ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(chunks[0][0])
    separated = [x for pair in zip(chunks, [[image_token_index] * (offset + 1)] * len(chunks)) for x in pair][:-1]
    for x in separated:
        input_ids.extend(x[offset:])
    return input_ids


def llava_v1_labels(messages, system, tokenizer, image_token_index):
    """LLaVA-1.5 `preprocess_v1` with its legacy tokenizer: ids and labels (all masked on a length mismatch)."""
    prompt = system + " "
    for message in messages:
        role = "USER" if message["role"] == "user" else "ASSISTANT"
        prompt += role + ": " + message["content"] + (" " if role == "USER" else "</s>")
    input_ids = tokenizer_image_token(prompt, tokenizer, image_token_index)
    target = list(input_ids)
    sep = " ASSISTANT: "
    cur_len = 1
    target[:cur_len] = [IGNORE_INDEX] * cur_len
    for rou in prompt.split("</s>"):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(tokenizer_image_token(rou, tokenizer, image_token_index))
        instruction_len = len(tokenizer_image_token(parts[0], tokenizer, image_token_index)) - 2
        target[cur_len : cur_len + instruction_len] = [IGNORE_INDEX] * instruction_len
        cur_len += round_len
    target[cur_len:] = [IGNORE_INDEX] * (len(target) - cur_len)
    if cur_len != len(input_ids):
        target = [IGNORE_INDEX] * len(target)  # LLaVA's "tokenization mismatch": the whole sample is masked
    return input_ids, target


def expand_image(ids, labels, image_token_index, image_token_id, count):
    out_ids, out_labels = [], []
    for token, label in zip(ids, labels):
        if token == image_token_index:
            out_ids += [image_token_id] * count
            out_labels += [IGNORE_INDEX] * count
        else:
            out_ids.append(token)
            out_labels.append(label)
    return out_ids, out_labels


# ---- fixtures ----


def build_processor(tokenizer):
    """The tiny tower's processor (56 px, 16 image tokens) around a copy of `tokenizer` given `<image>`/`<pad>`."""
    from processing.processing_sqllava import SQLlavaProcessor, add_sqllava_special_tokens, build_image_processor

    tokenizer = copy.deepcopy(tokenizer)
    add_sqllava_special_tokens(tokenizer)
    return SQLlavaProcessor(build_image_processor(56), tokenizer, image_seq_length=16)


@pytest.fixture(scope="module")
def processor(tiny_tokenizer):
    return build_processor(tiny_tokenizer)


@pytest.fixture(scope="module")
def llama_processor(llama_tokenizer):
    return build_processor(llama_tokenizer)


def collate(processor, records, **kwargs):
    collator = SelfQuestioningCollator(processor=processor, **kwargs)
    return collator, collator(records)


# ---- import hygiene ----


def test_collator_imports_without_trl():
    """`from recipes.collator import SelfQuestioningCollator` must not import TRL (the collator runs without it)."""
    code = "import sys; from recipes.collator import SelfQuestioningCollator; assert 'trl' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, env={**os.environ, "PYTHONPATH": "."})


# ---- the vuser draw ----


def test_draw_is_seeded_reproducible_and_redrawn_each_epoch():
    """Same (seed, epoch, index) -> same draw in fresh calls; other epochs differ; the rate matches sq_ratio."""
    draws0 = [vuser_draw(0, 0, i, 4, 0.5) for i in range(500)]
    assert draws0 == [vuser_draw(0, 0, i, 4, 0.5) for i in range(500)]
    draws1 = [vuser_draw(0, 1, i, 4, 0.5) for i in range(500)]
    other_seed = [vuser_draw(1, 0, i, 4, 0.5) for i in range(500)]
    assert draws0 != draws1 and draws0 != other_seed
    flat = np.array(draws0, dtype=float).ravel()
    assert abs(flat.mean() - 0.5) < 0.05  # 2,000 Bernoulli(0.5) draws: 4.5 standard deviations
    rate = np.array([vuser_draw(3, 0, i, 3, 0.2) for i in range(1000)], dtype=float).mean()
    assert abs(rate - 0.2) < 0.04
    assert vuser_draw(0, 0, 0, 3, 0.0) == [False] * 3 and vuser_draw(0, 0, 0, 3, 1.0) == [True] * 3


def test_collator_uses_the_draw_of_its_epoch(processor):
    """The collator converts exactly the turns `vuser_draw(seed, epoch, index)` picks, and set_epoch changes them."""
    collator = SelfQuestioningCollator(processor, sq_ratio=0.5, seed=7)
    seen = set()
    for epoch in range(3):
        collator.set_epoch(epoch)
        for index in range(20):
            roles = [m["role"] for m in collator.convert_messages(make_record(index))]
            users = [r for r in roles if r in ("user", "vuser")]
            assert users[0] == "user"  # the first user turn is never converted
            expected = vuser_draw(7, epoch, index, 3, 0.5)
            assert [r == "vuser" for r in users[1:]] == expected
            seen.add((epoch, index, tuple(expected)))
    per_epoch = [tuple(d for e, i, d in sorted(seen) if e == epoch) for epoch in range(3)]
    assert per_epoch[0] != per_epoch[1] != per_epoch[2]


def test_first_turn_single_turn_and_text_only_never_converted(processor):
    collator = SelfQuestioningCollator(processor, sq_ratio=1.0)
    roles = [m["role"] for m in collator.convert_messages(make_record())]
    assert roles == ["user", "assistant"] + ["vuser", "assistant"] * 3
    single = make_record(turns=CONVERSATION[:1])
    assert collator.convert_messages(single) == single["messages"]
    text_only = make_record(image=False)
    assert collator.convert_messages(text_only) == text_only["messages"]
    batch = collator([single, text_only])
    assert not batch["question_mask"].any()
    # The input record is not modified by the conversion.
    record = make_record()
    before = [dict(m) for m in record["messages"]]
    collator([record])
    assert record["messages"] == before


# ---- labels ----


def test_sq_ratio_one_labels_every_later_question(processor):
    """sq_ratio=1: spans are A1, Q2, A2, Q3, A3, Q4, A4, each with its `</s>`; the first question is not labelled."""
    tokenizer = processor.tokenizer
    _, batch = collate(processor, [make_record()], sq_ratio=1.0)
    spans = labelled_spans(batch["labels"][0], batch["question_mask"][0])
    expected = [(CONVERSATION[0][1], False)]
    for question, answer in CONVERSATION[1:]:
        expected += [(question, True), (answer, False)]
    decoded = [(tokenizer.decode(ids).strip(), is_q) for ids, is_q in spans]
    assert decoded == [(text + "</s>", is_q) for text, is_q in expected]


def test_labels_and_question_mask_from_token_roles(processor):
    """labels = input_ids where role != 0 (else -100); question_mask = role 2; attention covers the sequence."""
    record = make_record(3)
    collator, batch = collate(processor, [record], sq_ratio=0.5, seed=1)
    encoded = processor.tokenize_conversation(
        collator.convert_messages(record), mode="chat", system_prompt=collator.system_prompt
    )
    n = len(encoded["input_ids"])
    roles = torch.tensor(encoded["token_roles"])
    assert batch["input_ids"][0, :n].tolist() == encoded["input_ids"]
    assert torch.equal(batch["labels"][0, :n], torch.where(roles > 0, torch.tensor(encoded["input_ids"]), -100))
    assert torch.equal(batch["question_mask"][0, :n], roles == 2)
    assert batch["attention_mask"][0, :n].all() and not batch["attention_mask"][0, n:].any()
    assert (batch["labels"][0, n:] == IGNORE_INDEX).all()


def test_finetune_uses_sq_system_prompt_and_pretrain_the_plain_format(processor):
    from processing.processing_sqllava import SQ_SYSTEM_PROMPT

    tokenizer = processor.tokenizer
    _, batch = collate(processor, [make_record(turns=CONVERSATION[:1])], sq_ratio=0.0)
    text = tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert SQ_SYSTEM_PROMPT in text
    caption = {"id": "cap", "index": 0, "images": [Image.new("RGB", (20, 20))], "messages": [
        {"role": "user", "content": "<image>\n"}, {"role": "assistant", "content": "A red circle on white."}]}
    _, batch = collate(processor, [caption], mode="pretrain")
    spans = labelled_spans(batch["labels"][0], batch["question_mask"][0])
    assert len(spans) == 1 and not spans[0][1]
    assert tokenizer.decode(spans[0][0]).strip() == "A red circle on white."
    assert "USER" not in tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])


def test_padding_right_to_multiple_of_8_and_pixel_values(processor):
    records = [make_record(0), make_record(1, turns=CONVERSATION[:1]), make_record(2, image=False)]
    _, batch = collate(processor, records, sq_ratio=0.5)
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] - lengths.max() < 8
    pad = processor.tokenizer.pad_token_id
    for row, length in enumerate(lengths.tolist()):
        assert (batch["input_ids"][row, length:] == pad).all() and batch["attention_mask"][row, :length].all()
    assert batch["pixel_values"].shape[0] == 2  # two samples with an image, the text-only one has none
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert (batch["input_ids"] == image_id).sum() == 2 * processor.image_seq_length
    _, left = collate(processor, records, padding_side="left", pad_to_multiple_of=None)
    assert left["input_ids"].shape[1] == lengths.max() and left["attention_mask"][:, -1].all()


# ---- truncation and bad samples ----


def test_truncation_through_image_drops_and_counts_and_strict_raises(processor):
    image_tokens = processor.image_seq_length
    collator, batch = collate(processor, [make_record(0, sample_id="cut"), make_record(1, image=False)],
                              max_length=image_tokens)  # the system prompt alone pushes the image past the cut
    assert collator.stats.counts[SKIP_IMAGE_TRUNCATED] == 1 and "cut" in collator.stats.examples[SKIP_IMAGE_TRUNCATED]
    assert batch["input_ids"].shape[0] == 1 and "pixel_values" not in batch
    with pytest.raises(ValueError, match="cut"):
        collate(processor, [make_record(0, sample_id="cut")], max_length=image_tokens, strict=True)


def test_text_only_truncation_keeps_start_and_truncates_labels(processor):
    record = make_record(0)
    collator = SelfQuestioningCollator(processor, sq_ratio=1.0, max_length=None)
    full = collator([record])
    n = int(full["attention_mask"].sum())
    cut = n - 5  # only the last answer's tail is cut
    truncated = SelfQuestioningCollator(processor, sq_ratio=1.0, max_length=cut, pad_to_multiple_of=None)([record])
    assert truncated["input_ids"].shape[1] == cut
    assert torch.equal(truncated["input_ids"][0], full["input_ids"][0, :cut])
    assert torch.equal(truncated["labels"][0], full["labels"][0, :cut])
    assert torch.equal(truncated["question_mask"][0], full["question_mask"][0, :cut])


def test_truncation_leaving_no_label_is_dropped(processor):
    """A (text-only) sample whose first trained token lies past max_length would train on nothing: dropped, counted."""
    record = make_record(0, image=False, sample_id="nolabel")
    collator = SelfQuestioningCollator(processor, sq_ratio=0.0)
    encoded = processor.tokenize_conversation(record["messages"], mode="chat", system_prompt=collator.system_prompt)
    first_label = next(i for i, r in enumerate(encoded["token_roles"]) if r)
    collator, batch = collate(processor, [record, make_record(1, image=False)], max_length=first_label)
    assert dict(collator.stats.counts) == {SKIP_NO_LABELS_AFTER_TRUNCATION: 2}
    assert batch["input_ids"].shape[0] == 1 and (batch["labels"] == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="nolabel"):
        collate(processor, [record], max_length=first_label, strict=True)


def test_unreadable_and_missing_images_are_counted(processor, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (0, 0, 255)).save(good)
    records = [
        make_record(0, sample_id="corrupt", images=[str(corrupt)]),
        make_record(1, sample_id="missing", images=[str(tmp_path / "missing.png")]),
        make_record(2, sample_id="good", images=[str(good)]),
    ]
    collator, batch = collate(processor, records)
    assert collator.stats.counts[SKIP_UNREADABLE_IMAGE] == 2
    assert sorted(collator.stats.examples[SKIP_UNREADABLE_IMAGE]) == ["corrupt", "missing"]
    assert batch["input_ids"].shape[0] == 1 and batch["pixel_values"].shape[0] == 1
    with pytest.raises(ValueError, match="corrupt"):
        collate(processor, records, strict=True)


def test_batch_with_every_sample_dropped_adds_zero_loss(processor, tmp_path):
    records = [make_record(0, images=[str(tmp_path / "none.png")])]
    collator, batch = collate(processor, records)
    assert collator.stats.total == 1
    assert batch["input_ids"].shape == (1, 8) and (batch["labels"] == IGNORE_INDEX).all()
    assert "pixel_values" not in batch


def test_invalid_arguments_raise():
    class FakeProcessor:
        pass

    with pytest.raises(TypeError, match="tokenize_conversation"):
        SelfQuestioningCollator(FakeProcessor())
    with pytest.raises(ValueError, match="sq_ratio"):
        SelfQuestioningCollator(FakeProcessor(), sq_ratio=1.5)
    with pytest.raises(ValueError, match="mode"):
        SelfQuestioningCollator(FakeProcessor(), mode="stage3")


def test_missing_index_raises_when_a_draw_is_needed(processor):
    record = make_record(0)
    del record["index"]
    with pytest.raises(ValueError, match="index"):
        SelfQuestioningCollator(processor, sq_ratio=0.5)([record])


# ---- real Llama vocabulary ----


def test_llama_vocab_sq_spans_decode_to_expected_strings(llama_processor):
    """With the real Vicuna vocabulary, every labelled span decodes to its text + `</s>` (sq_ratio=1)."""
    tokenizer = llama_processor.tokenizer
    _, batch = collate(llama_processor, [make_record()], sq_ratio=1.0)
    spans = labelled_spans(batch["labels"][0], batch["question_mask"][0])
    expected = [CONVERSATION[0][1] + "</s>"]
    kinds = [False]
    for question, answer in CONVERSATION[1:]:
        expected += [question + "</s>", answer + "</s>"]
        kinds += [True, False]
    assert [tokenizer.decode(ids).strip() for ids, _ in spans] == expected
    assert [is_q for _, is_q in spans] == kinds


@pytest.mark.parametrize(
    "turns",
    [CONVERSATION, [("How many circles are there?", "2"), ("And squares?", "3 squares.")]],
    ids=["words", "digits"],
)
def test_llama_vocab_sq_ratio_zero_equals_llava_v15_labels(llama_processor, turns):
    """sq_ratio=0 gives exactly LLaVA-1.5's preprocess_v1 input ids and labels (same system prompt), token for token.

    Digit answers matter: Llama splits " 2" into a standalone "▁" and "2", and LLaVA labels that "▁" (generation
    starts right after "ASSISTANT:" and must produce it)."""
    tokenizer = llama_processor.tokenizer
    record = make_record(turns=turns)
    collator, batch = collate(llama_processor, [record], sq_ratio=0.0, pad_to_multiple_of=None)
    ids, labels = llava_v1_labels(record["messages"], collator.system_prompt, tokenizer, -200)
    assert any(label != IGNORE_INDEX for label in labels), "the reference itself reported a tokenization mismatch"
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    ref_ids, ref_labels = expand_image(ids, labels, -200, image_id, llama_processor.image_seq_length)
    assert batch["input_ids"][0].tolist() == ref_ids
    assert batch["labels"][0].tolist() == ref_labels


# ---- stage 1, size limits, the in-batch skip report ----


def test_pretrain_drops_and_counts_multi_turn_records_instead_of_joining_their_answers(processor):
    """LLaVA's plain format is one caption per image: a multi-turn record in stage 1 would train its answers joined
    together (and lose the later questions), so it is dropped and counted, never trained on silently."""
    caption = make_record(0, turns=CONVERSATION[:1], sample_id="caption")
    multi = make_record(1, turns=CONVERSATION[:3], sample_id="multi")
    collator, batch = collate(processor, [caption, multi], mode="pretrain")
    assert dict(collator.stats.counts) == {"multi_turn_in_pretrain": 1}
    assert collator.stats.examples["multi_turn_in_pretrain"] == ["multi"]
    assert batch["input_ids"].shape[0] == 1
    labelled = [t for t in batch["labels"][0].tolist() if t != IGNORE_INDEX]
    assert processor.tokenizer.decode(labelled) == "A red circle.\n"
    # Stage 2 trains the same record in full.
    _, batch = collate(processor, [multi], mode="finetune")
    assert batch["input_ids"].shape[0] == 1


def test_batch_carries_its_skip_report_for_workers_and_ranks(processor, tmp_path):
    """With `report_skips`, what the collator dropped travels in the batch (out of dataloader workers)."""
    records = [make_record(0, sample_id="ok"), make_record(1, sample_id="gone", images=[str(tmp_path / "x.png")])]
    _, batch = collate(processor, records, report_skips=True)
    report = batch["skip_report"]
    assert report["seen"] == 2 and [(r, i) for r, i, _ in report["skipped"]] == [(SKIP_UNREADABLE_IMAGE, "gone")]
    assert "x.png" in report["skipped"][0][2]
    _, empty = collate(processor, records[1:], report_skips=True)  # a batch whose every sample was dropped
    assert empty["skip_report"]["seen"] == 1 and len(empty["skip_report"]["skipped"]) == 1


def test_images_over_the_size_limits_are_dropped_under_their_own_reason(processor, tmp_path):
    banner = tmp_path / "banner.png"
    Image.new("RGB", (4000, 8)).save(banner)
    records = [make_record(0, sample_id="banner", images=[str(banner)]), make_record(1)]
    collator, batch = collate(processor, records)
    assert dict(collator.stats.counts) == {"image_size_limit": 1} and batch["input_ids"].shape[0] == 1
    collator, batch = collate(processor, records, max_image_aspect_ratio=None)
    assert collator.stats.total == 0 and batch["pixel_values"].shape[0] == 2


def test_strict_errors_tell_a_command_line_user_the_flag(processor, tmp_path):
    with pytest.raises(ValueError, match=r"'gone': unreadable_image .*`--strict_data false` on the command line"):
        collate(processor, [make_record(0, sample_id="gone", images=[str(tmp_path / "x.png")])], strict=True)


def test_training_pixels_equal_inference_pixels_for_a_transparent_image(processor, tmp_path):
    """The collator (training) and the processor called on the file (inference) decode and preprocess alike."""
    rng = np.random.default_rng(0)
    path = tmp_path / "rgba.png"
    Image.fromarray(rng.integers(0, 256, (30, 50, 4), dtype=np.uint8), "RGBA").save(path)
    _, batch = collate(processor, [make_record(0, images=[str(path)])])
    inference = processor(images=str(path), text="<image>\nWhat is it?", return_tensors="pt")["pixel_values"]
    assert torch.equal(batch["pixel_values"], inference)
