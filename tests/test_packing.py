"""Padding-free (packed) batches, and right-padded batches without their attention mask: the loss and every gradient
equal those of the padded, masked batch.

A packed batch puts the samples of a batch one after the other in a single row, with `position_ids` restarting at 0
at each sample and no `attention_mask` (TRL's `padding_free`). transformers then builds a block-diagonal causal mask
from the `position_ids` (`masking_utils.find_packed_sequence_indices`, on 4.57 and 5.x), so no token attends across a
sample boundary. The checks run in float64 with every parameter of the tiny model trainable, under SDPA and eager,
on hand-made batches (here and, in a subprocess, under the other transformers version) and on the collator's own
batches; a control shows that the comparison fails when the packed row is not recognised as packed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from recipes.collator import IGNORE_INDEX, SelfQuestioningCollator
from tests.conftest import other_transformers_python
from tests.test_collator import CONVERSATION, build_processor, make_record

REPO_ROOT = Path(__file__).resolve().parents[1]

# A self-contained script: run here under this transformers, and in a subprocess under the other one.
MODEL_LEVEL_CHECK = textwrap.dedent(
    """
    import torch
    import transformers

    from modeling_sqllava import SQLlavaForConditionalGeneration
    from recipes.tiny import tiny_model_config


    def token_ce(logits, labels):
        # Sum and count of the next-token cross-entropy over labelled positions, in float64.
        logits, labels = logits[:, :-1].double(), labels[:, 1:]
        mask = labels != -100
        log_probs = torch.log_softmax(logits, dim=-1)
        ce = -log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (ce * mask).sum(), mask.sum()


    def loss_and_grads(model, inputs, labels):
        model.zero_grad(set_to_none=True)
        out = model(**inputs, use_cache=False)
        total, count = token_ce(out.logits, labels)
        loss = total / count
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads, out.image_hidden_states


    def make_batches(config, lengths=(30, 45, 22), images=(True, True, False), seed=0):
        # Samples of different lengths: BOS, then the image tokens (when the sample has an image), then text; about
        # 60% of the text positions labelled. Returns the padded and the packed form of the same batch.
        g = torch.Generator().manual_seed(seed)
        n_image = config.image_seq_length
        samples = []
        for length, has_image in zip(lengths, images):
            ids = torch.randint(3, 600, (length,), generator=g)
            ids[0] = 1
            labels = ids.clone()
            labels[0] = -100
            if has_image:
                ids[1 : 1 + n_image] = config.image_token_id
                labels[: 1 + n_image] = -100
            labels[torch.rand(length, generator=g) < 0.4] = -100
            samples.append((ids, labels))
        size = config.vision_config.image_size
        pixel_values = torch.randn(sum(images), 3, size, size, generator=g, dtype=torch.float64)
        longest = max(lengths)
        pad = config.text_config.pad_token_id
        padded = {
            "input_ids": torch.full((len(samples), longest), pad),
            "attention_mask": torch.zeros(len(samples), longest, dtype=torch.long),
            "pixel_values": pixel_values,
        }
        padded_labels = torch.full((len(samples), longest), -100)
        for row, (ids, labels) in enumerate(samples):
            padded["input_ids"][row, : len(ids)] = ids
            padded["attention_mask"][row, : len(ids)] = 1
            padded_labels[row, : len(ids)] = labels
        packed = {
            "input_ids": torch.cat([ids for ids, _ in samples])[None],
            "position_ids": torch.cat([torch.arange(len(ids)) for ids, _ in samples])[None],
            "pixel_values": pixel_values,
        }
        packed_labels = torch.cat([labels for _, labels in samples])[None]
        return (padded, padded_labels), (packed, packed_labels)


    def check(attn_implementation):
        torch.manual_seed(0)
        model = SQLlavaForConditionalGeneration(tiny_model_config(attn_implementation=attn_implementation))
        model = model.double().train()
        (padded, padded_labels), (packed, packed_labels) = make_batches(model.config)
        loss_padded, grads_padded, images_padded = loss_and_grads(model, padded, padded_labels)
        loss_packed, grads_packed, images_packed = loss_and_grads(model, packed, packed_labels)
        assert grads_padded.keys() == grads_packed.keys() and len(grads_padded) > 40, len(grads_padded)
        # Largest gradient difference relative to the largest gradient entry (a per-tensor ratio is meaningless for
        # tensors whose exact gradient is 0, such as the key biases, which the softmax is invariant to).
        scale = max(g.abs().max().item() for g in grads_padded.values())
        grad_diff = max((grads_packed[n] - grads_padded[n]).abs().max().item() for n in grads_padded) / scale
        # The right-padded batch without its attention mask (what SQLlavaTrainer feeds): causal attention alone keeps
        # every real token away from the padding after it, and the padding is never labelled.
        unmasked = {k: v for k, v in padded.items() if k != "attention_mask"}
        loss_unmasked, grads_unmasked, _ = loss_and_grads(model, unmasked, padded_labels)
        unmasked_diff = max((grads_unmasked[n] - grads_padded[n]).abs().max().item() for n in grads_padded) / scale
        # Control: with an all-ones attention mask the row is one long sequence, samples attend to each other.
        crossed = dict(packed, attention_mask=torch.ones_like(packed["input_ids"]))
        with torch.no_grad():
            total, count = token_ce(model(**crossed, use_cache=False).logits, packed_labels)
        return {
            "transformers": transformers.__version__,
            "attn": model.config.text_config._attn_implementation,
            "loss_rel_diff": abs((loss_packed - loss_padded) / loss_padded).item(),
            "max_grad_diff": grad_diff,
            "images_equal": bool(torch.equal(images_packed, images_padded)),
            "unmasked_loss_rel_diff": abs((loss_unmasked - loss_padded) / loss_padded).item(),
            "unmasked_max_grad_diff": unmasked_diff,
            "control_loss_rel_diff": abs((total / count - loss_padded) / loss_padded).item(),
        }
    """
)


# transformers' eager attention takes its softmax in float32 whatever the input dtype, so eager agrees to float32
# rounding (about 1e-7); SDPA computes in float64 and agrees to float64 rounding.
TOLERANCE = {"sdpa": 1e-12, "eager": 1e-6}


def _check_result(result: dict, attn: str) -> None:
    assert result["attn"] == attn, result
    assert result["loss_rel_diff"] < TOLERANCE[attn], result
    assert result["max_grad_diff"] < TOLERANCE[attn], result
    assert result["images_equal"], result
    assert result["unmasked_loss_rel_diff"] < TOLERANCE[attn], result
    assert result["unmasked_max_grad_diff"] < TOLERANCE[attn], result
    # The comparison can fail: the same row without the packed-sequence detection gives another loss.
    assert result["control_loss_rel_diff"] > 1e-4, result


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_gives_the_padded_loss_and_gradients_float64(attn):
    namespace: dict = {}
    exec(MODEL_LEVEL_CHECK, namespace)  # noqa: S102 - the script is this module's own constant
    _check_result(namespace["check"](attn), attn)


def test_other_transformers_version_honours_packed_position_ids(tmp_path):
    """transformers 4.57 (or 5.x when this runs 4.57) builds the same block-diagonal mask for Llama."""
    python = other_transformers_python()
    if python is None:
        pytest.skip("no other transformers environment; set SQLLAVA_OTHER_PYTHON to its python")
    script = MODEL_LEVEL_CHECK + "\nimport json\nprint(json.dumps([check('sdpa'), check('eager')]))\n"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run(
        [python, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    import json

    sdpa, eager = json.loads(result.stdout.strip().splitlines()[-1])
    import transformers

    assert sdpa["transformers"].split(".")[0] != transformers.__version__.split(".")[0], (sdpa, sys.executable)
    _check_result(sdpa, "sdpa")
    _check_result(eager, "eager")


# ---- the collator's packed batches ----


@pytest.fixture(scope="module")
def processor(tiny_tokenizer):
    return build_processor(tiny_tokenizer)


def conversation_records():
    # Different numbers of turns (1 to 4) and one text-only sample: unequal lengths, some vuser turns drawn.
    records = [make_record(i, turns=CONVERSATION[: 1 + i % 4]) for i in range(5)]
    records.append(make_record(5, image=False, turns=CONVERSATION[:2]))
    return records


def collate_both(processor, records, epoch=0, **kwargs):
    padded_collator = SelfQuestioningCollator(processor, sq_ratio=0.5, seed=3, **kwargs)
    packed_collator = SelfQuestioningCollator(processor, sq_ratio=0.5, seed=3, padding_free=True, **kwargs)
    padded_collator.set_epoch(epoch)
    packed_collator.set_epoch(epoch)
    return padded_collator(records), packed_collator(records), padded_collator, packed_collator


def test_collator_packs_each_sample_of_the_padded_batch_in_order(processor):
    records = conversation_records()
    padded, packed, padded_collator, packed_collator = collate_both(processor, records, epoch=1)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 1
    lengths = padded["attention_mask"].sum(1).tolist()
    assert len(set(lengths)) > 1  # the padded batch has padding
    assert packed["input_ids"].shape[1] == sum(lengths)  # the packed one has none
    rows = {key: [padded[key][i, :n] for i, n in enumerate(lengths)] for key in ("input_ids", "labels", "question_mask")}
    for key in ("input_ids", "labels", "question_mask"):
        assert torch.equal(packed[key][0], torch.cat(rows[key])), key
    # Samples start with an untrained BOS, so no label is predicted across a boundary.
    starts = torch.tensor([0] + lengths[:-1]).cumsum(0)
    assert (packed["labels"][0, starts] == IGNORE_INDEX).all()
    assert torch.equal(packed["position_ids"][0], torch.cat([torch.arange(n) for n in lengths]))
    assert packed["cu_seq_lens_q"].tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert packed["cu_seq_lens_q"].dtype == torch.int32 and torch.equal(packed["cu_seq_lens_k"], packed["cu_seq_lens_q"])
    assert packed["max_length_q"] == packed["max_length_k"] == max(lengths)
    assert torch.equal(packed["pixel_values"], padded["pixel_values"])  # images in the samples' order
    # The vuser draw is the collator's, unchanged by packing: some later turns became questions, identically.
    assert packed["question_mask"].any()
    for record in records:
        assert packed_collator.convert_messages(record) == padded_collator.convert_messages(record)


def test_collator_rejects_left_padding_when_packing(processor):
    with pytest.raises(ValueError, match="padding_free"):
        SelfQuestioningCollator(processor, padding_free=True, padding_side="left")


def _split_ce(model, batch):
    """Float64 answer / question CE sums and counts of a collator batch, with the gradients of their total mean."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "question_mask")}
    inputs["pixel_values"] = inputs["pixel_values"].double()
    model.zero_grad(set_to_none=True)
    logits = model(**inputs, use_cache=False).logits[:, :-1].double()
    labels, questions = batch["labels"][:, 1:], batch["question_mask"][:, 1:]
    mask = labels != IGNORE_INDEX
    ce = -torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    answer, question = mask & ~questions, mask & questions
    loss = ce.sum() / mask.sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    sums = [(ce * answer).sum().item(), int(answer.sum()), (ce * question).sum().item(), int(question.sum())]
    return loss.item(), sums, grads


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_collator_packed_batch_trains_like_the_padded_batch_float64(tiny_tokenizer, processor, attn):
    """Loss, answer/question split and every gradient of the collator's packed batch equal the padded batch's."""
    from recipes.tiny import build_tiny_model

    model = build_tiny_model(tiny_tokenizer, attn_implementation=attn).double().train()
    model.requires_grad_(True)
    padded, packed, _, _ = collate_both(processor, conversation_records(), epoch=1)
    loss_padded, sums_padded, grads_padded = _split_ce(model, padded)
    loss_packed, sums_packed, grads_packed = _split_ce(model, packed)
    assert sums_padded[3] > 0 and sums_padded[1] > 0
    assert loss_packed == pytest.approx(loss_padded, rel=TOLERANCE[attn])
    assert sums_packed[1::2] == sums_padded[1::2]  # same answer and question token counts
    assert sums_packed[0::2] == pytest.approx(sums_padded[0::2], rel=TOLERANCE[attn])
    assert grads_packed.keys() == grads_padded.keys() and len(grads_padded) > 40
    scale = max(g.abs().max().item() for g in grads_padded.values())
    for name, grad in grads_padded.items():
        torch.testing.assert_close(grads_packed[name], grad, rtol=0, atol=TOLERANCE[attn] * scale, msg=name)


def test_trainer_trains_on_packed_batches_with_the_same_loss_and_split(tiny_tokenizer, processor, tmp_path):
    """`padding_free=True` in the config: the trainer's collator packs, and the loss and the logged answer/question
    losses of a packed batch equal those of the padded batch (float64), with `num_tokens` counting real tokens."""
    pytest.importorskip("trl")
    import copy

    from tests.test_trainer import lora_model, make_trainer

    model = lora_model(tiny_tokenizer, torch.float64)
    model_copy = copy.deepcopy(model)
    records = conversation_records()
    results = {}
    for padding_free, m in ((False, model), (True, model_copy)):
        trainer = make_trainer(m, processor, tmp_path / str(padding_free), padding_free=padding_free, sq_ratio=0.5)
        assert trainer.data_collator.padding_free is padding_free and trainer.args.padding_free is padding_free
        trainer.data_collator.set_epoch(1)
        batch = trainer.data_collator(records)
        batch["pixel_values"] = batch["pixel_values"].double()
        m.train()
        loss = trainer.compute_loss(m, dict(batch)).item()
        trainer.log({})
        results[padding_free] = (loss, trainer.state.log_history[-1], batch)
    (loss_padded, log_padded, padded), (loss_packed, log_packed, _) = results[False], results[True]
    assert loss_packed == pytest.approx(loss_padded, rel=1e-12)
    for key in ("loss_answer", "loss_question", "question_token_fraction", "mean_token_accuracy", "entropy"):
        assert log_packed[key] == pytest.approx(log_padded[key], rel=1e-12), key
    assert log_packed["num_tokens"] == log_padded["num_tokens"] == int(padded["attention_mask"].sum())
