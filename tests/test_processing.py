"""SQ-LLaVA processor: chat template strings, tokenizer fidelity against the original LLaVA procedure (real Llama
vocabulary, checked with `sentencepiece` itself), trained-token roles, image preprocessing against an independent
computation, error messages, and remote-code save/load in a fresh process (transformers 5.x and 4.57.x).
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from processing import (
    CHAT_TEMPLATE,
    LLAVA_SYSTEM_PROMPT,
    SQ_SYSTEM_PROMPT,
    SQLlavaProcessor,
    add_sqllava_special_tokens,
    build_image_processor,
    render_conversation,
)
from tests.conftest import (
    REPO_ROOT,
    llama_sentencepiece_proto,
    other_transformers_python,
    requires_llama_vocab,
    run_fresh_python_json,
)

SYS = LLAVA_SYSTEM_PROMPT
SQ = SQ_SYSTEM_PROMPT
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])

QA = [
    {"role": "user", "content": "<image>\nWhat is it?"},
    {"role": "assistant", "content": "A cat."},
]
QA_VUSER = QA + [{"role": "vuser", "content": "Is it black?"}, {"role": "assistant", "content": "Yes."}]
QA_MULTI = QA + [{"role": "user", "content": "Is it black?"}, {"role": "assistant", "content": "Yes."}]


def render(processor, messages, **kwargs) -> str:
    return processor.apply_chat_template(messages, tokenize=False, **kwargs)


# --------------------------------------------------------------------------------------------------- chat template


def test_system_prompts_are_the_exact_trained_strings():
    assert SYS == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions."
    )
    # No space between the two sentences: that is how SQ-LLaVA was trained.
    assert SQ == SYS + (
        "Also, the artificial intelligence assistant is a curious virtual user. The virtual user asks complex "
        "questions that are relevant to the content in the image, for example, asking about background knowledge "
        "of the objects in the image, asking to discuss about events happening in the image, etc. Again, do not ask "
        "about uncertain details."
    )


def test_jinja_file_is_the_embedded_template():
    assert (REPO_ROOT / "processing" / "chat_template.jinja").read_text(encoding="utf-8") == CHAT_TEMPLATE


Q1 = " USER: <image>\nWhat is it? "
A1 = "ASSISTANT: A cat.</s>"
BRIEF = [{"role": "system", "content": "Be brief."}]
PLAIN_PARTS = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Caption it."}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Two red squares."}]},
]
ASK = {"add_generation_prompt": True, "generation_role": "vuser"}
GEN = {"add_generation_prompt": True}
RENDER_CASES = {
    "answer-prompt": (QA[:1], GEN, SYS + Q1 + "ASSISTANT:"),
    "single-turn": (QA, {}, SYS + Q1 + A1),
    "multi-turn": (QA_MULTI, {}, SYS + Q1 + A1 + "USER: Is it black? ASSISTANT: Yes.</s>"),
    "vuser": (QA_VUSER, {}, SQ + Q1 + A1 + "VUSER: Is it black?</s> ASSISTANT: Yes.</s>"),
    "ask-prompt": (QA, ASK, SQ + Q1 + A1 + "VUSER:"),
    "after-vuser": (QA_VUSER[:3], GEN, SQ + Q1 + A1 + "VUSER: Is it black?</s> ASSISTANT:"),
    "explicit-system": (BRIEF + QA_VUSER[:3], {}, "Be brief." + Q1 + A1 + "VUSER: Is it black?</s> "),
    "explicit-system-ask": (BRIEF + QA[:1], ASK, "Be brief." + Q1 + "VUSER:"),
    "system_prompt-kwarg": (QA[:1], {"add_generation_prompt": True, "system_prompt": "S."}, "S." + Q1 + "ASSISTANT:"),
    # An image with no text renders as LLaVA's preprocess_multimodal leaves it: "<image>" alone, no newline.
    "image-only-parts": ([{"role": "user", "content": [{"type": "image"}]}], GEN, SYS + " USER: <image> ASSISTANT:"),
    "image-only-string": ([{"role": "user", "content": "<image>"}], GEN, SYS + " USER: <image> ASSISTANT:"),
    "plain": (QA, {"mode": "plain"}, "<image>A cat.\n"),
    "plain-parts": (PLAIN_PARTS, {"mode": "plain"}, "<image>Two red squares.\n"),
}


@pytest.mark.parametrize("messages, kwargs, expected", list(RENDER_CASES.values()), ids=list(RENDER_CASES))
def test_rendered_prompts_are_exact(tiny_processor, messages, kwargs, expected):
    # Every prompt opens with the BOS token, as transformers' templates do (the processor adds no second one).
    assert render(tiny_processor, messages, **kwargs) == "<s>" + expected
    # The jinja-free renderer used for training gives the same string.
    text, _ = render_conversation(
        messages,
        mode=kwargs.get("mode", "chat"),
        system_prompt=kwargs.get("system_prompt"),
        add_generation_prompt=kwargs.get("add_generation_prompt", False),
        generation_role=kwargs.get("generation_role", "assistant"),
        bos_token="<s>",
    )
    assert text == "<s>" + expected
    assert render_conversation(messages, **kwargs)[0] == expected  # no `bos_token`: none, like the template


def test_list_content_renders_like_string_content(tiny_processor):
    parts = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "vuser", "content": [{"type": "text", "text": "Is it black?"}]},
    ]
    strings = QA_VUSER[:3]
    assert render(tiny_processor, parts) == render(tiny_processor, strings)
    assert render_conversation(parts, bos_token="<s>")[0] == render(tiny_processor, strings)


def test_processor_built_from_components_carries_the_template(tiny_tokenizer):
    processor = SQLlavaProcessor(build_image_processor(56), tiny_tokenizer, image_seq_length=16)
    assert processor.chat_template == CHAT_TEMPLATE


def _generation_indices(template: str, messages: list, **kwargs) -> tuple[str, list]:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, indices = render_jinja_template(
        conversations=[messages], chat_template=template, return_assistant_tokens_mask=True, **kwargs
    )
    return rendered[0], [tuple(span) for span in indices[0]]


@pytest.mark.parametrize("mode", ["chat", "plain"])
def test_generation_blocks_mark_the_same_spans_as_the_training_renderer(mode):
    more = [{"role": "user", "content": "And?"}, {"role": "assistant", "content": "Fur."}]
    messages = QA if mode == "plain" else QA_VUSER + more
    text, indices = _generation_indices(CHAT_TEMPLATE, messages, mode=mode)
    expected_text, spans = render_conversation(messages, mode=mode)
    assert text == expected_text
    assert indices == [(start, end) for start, end, _ in spans]
    trained = [text[start:end] for start, end in indices]
    if mode == "plain":
        assert trained == ["A cat.\n"]
    else:
        # Each span starts with the space after its role tag, which generation must produce.
        assert trained == [" A cat.</s>", " Is it black?</s>", " Yes.</s>", " Fur.</s>"]
        assert [role for *_, role in spans] == [1, 2, 1, 1]


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "empty"),
        ([{"role": "robot", "content": "hi"}], "unknown role 'robot'"),
        ([{"role": "assistant", "content": "hi"}], "must start with a user message"),
        ([{"role": "system", "content": "S"}, {"role": "vuser", "content": "hi"}], "must start with a user message"),
        ([{"role": "user", "content": "hi"}, {"role": "system", "content": "S"}], "only allowed first"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}], "is empty"),
        ([{"role": "user", "content": 3}], "must be a string or a list"),
    ],
)
def test_bad_conversations_raise_clear_errors(tiny_processor, messages, message):
    with pytest.raises((ValueError, TypeError), match=message):
        tiny_processor.apply_chat_template(messages)
    with pytest.raises((ValueError, TypeError), match=message):
        tiny_processor.tokenize_conversation(messages)


def test_bad_generation_role_and_mode_raise(tiny_processor):
    with pytest.raises(ValueError, match="generation_role"):
        tiny_processor.apply_chat_template(QA, add_generation_prompt=True, generation_role="robot")
    with pytest.raises(ValueError, match="mode"):
        tiny_processor.tokenize_conversation(QA, mode="fancy")
    with pytest.raises(ValueError, match="plain mode"):
        tiny_processor.tokenize_conversation(QA_VUSER, mode="plain")


# ------------------------------------------------------------------------------------------ tokenizer fidelity
# The reference reproduces what LLaVA ran: `tokenizer_image_token` with transformers 4.31's slow LlamaTokenizer
# (legacy=True): split every chunk at the special tokens, `sp_model.encode` each text segment (SentencePiece adds
# its dummy-prefix `▁` to each), BOS per chunk, BOS of later chunks dropped. SentencePiece runs on a model proto
# rebuilt from the GGUF vocabulary (pieces, scores, types; Llama's normalizer: identity, dummy prefix, spaces kept).


@pytest.fixture(scope="module")
def sentencepiece_llama():
    return sentencepiece_from_gguf()


def sentencepiece_from_gguf():
    """`sentencepiece.SentencePieceProcessor` on the Llama-2 vocabulary fixture (skips the test when it is absent)."""
    spm = pytest.importorskip("sentencepiece")
    return spm.SentencePieceProcessor(model_proto=llama_sentencepiece_proto())


def reference_llava_ids(prompt: str, sp, image_token_id: int, image_seq_length: int) -> list[int]:
    """LLaVA's `tokenizer_image_token` on the 4.31 slow legacy Llama tokenizer, image positions expanded. A `<s>`
    opening the prompt (the chat template's) stands for the BOS the tokenizer added: LLaVA's prompts had none."""
    specials = {"<unk>": 0, "<s>": 1, "</s>": 2}
    prompt = prompt[len("<s>") :] if prompt.startswith("<s>") else prompt

    def slow_tokenizer(chunk: str) -> list[int]:
        ids = [1]
        for segment in re.split(r"(<unk>|<s>|</s>)", chunk):
            if segment in specials:
                ids.append(specials[segment])
            elif segment:
                ids.extend(sp.encode(segment))
        return ids

    chunks = [slow_tokenizer(chunk) for chunk in prompt.split("<image>")]
    ids = chunks[0]
    for chunk in chunks[1:]:
        ids += [image_token_id] * image_seq_length + chunk[1:]
    return ids


@pytest.fixture(scope="module")
def llama_processor(llama_tokenizer):
    tokenizer = copy.deepcopy(llama_tokenizer)  # the session fixture is shared: never mutate it
    added = add_sqllava_special_tokens(tokenizer)
    assert added == 2
    return SQLlavaProcessor(build_image_processor(336), tokenizer, image_seq_length=576)


@requires_llama_vocab
def test_image_and_pad_tokens_are_32000_and_32001(llama_processor):
    tok = llama_processor.tokenizer
    assert tok.convert_tokens_to_ids(["<image>", "<pad>"]) == [32000, 32001]
    assert tok.pad_token_id == 32001 and llama_processor.image_token_id == 32000
    assert add_sqllava_special_tokens(tok) == 0  # idempotent


@requires_llama_vocab
def test_exact_ids_around_eos_and_role_tags(llama_processor, sentencepiece_llama):
    text = "A cat.</s>VUSER: Is it black?</s> ASSISTANT: Yes.</s>"
    ids = llama_processor(text=text)["input_ids"][0]
    # BOS, ▁A ▁cat . </s> ▁V USER : ▁Is ▁it ▁black ? </s> ▁ ▁A SS IST ANT : ▁Yes . </s>
    expected = [1, 319, 6635, 29889, 2, 478, 11889, 29901, 1317, 372, 4628, 29973, 2,
                29871, 319, 1799, 9047, 13566, 29901, 3869, 29889, 2]  # fmt: skip
    assert ids == expected
    assert ids == reference_llava_ids(text, sentencepiece_llama, 32000, 576)


@requires_llama_vocab
def test_chunk_ending_in_a_space_ends_with_29871_before_the_image(llama_processor, sentencepiece_llama):
    prompt = render(llama_processor, QA[:1], add_generation_prompt=True)
    ids = llama_processor(text=prompt, images=[PIL.Image.new("RGB", (8, 8))])["input_ids"][0]
    first_image = ids.index(32000)
    assert ids[first_image - 1] == 29871  # "... USER: " -> ... ▁US ER : ▁
    assert ids[first_image - 3 : first_image] == [1001, 29901, 29871]
    assert ids[first_image : first_image + 576] == [32000] * 576
    assert ids[first_image + 576 : first_image + 579] == [29871, 13, 5618]  # "\nWhat": ▁ <0x0A> What
    assert ids == reference_llava_ids(prompt, sentencepiece_llama, 32000, 576)


@requires_llama_vocab
@pytest.mark.parametrize(
    "messages, kwargs",
    [
        (QA_VUSER, {}),
        (QA_MULTI, {}),
        (QA_VUSER[:2], {"add_generation_prompt": True, "generation_role": "vuser"}),
        (QA, {"mode": "plain"}),
        ([{"role": "user", "content": "<image>\n  two  spaces,\ttab 日本 🐱 café <s> </s>x"},
          {"role": "assistant", "content": "Ünïcödé ok.\nNew line."}], {}),
    ],
)  # fmt: skip
def test_processor_ids_equal_the_original_llava_procedure(llama_processor, sentencepiece_llama, messages, kwargs):
    prompt = render(llama_processor, messages, **kwargs)
    ids = llama_processor(text=prompt, images=[PIL.Image.new("RGB", (8, 8))])["input_ids"][0]
    assert ids == reference_llava_ids(prompt, sentencepiece_llama, 32000, 576)


def reference_llava_v1_trained(prompt: str, sp) -> list[bool]:
    """LLaVA's `preprocess_v1` label masking (rounds split at `</s>`, instruction = up to "ASSISTANT: ", -2)."""
    ids = reference_llava_ids(prompt, sp, -200, 1)
    trained = [True] * len(ids)
    sep = " ASSISTANT: "
    cur = 1
    trained[0] = False
    for round_text in prompt.split("</s>"):
        if round_text == "":
            break
        parts = round_text.split(sep)
        parts[0] += sep
        round_len = len(reference_llava_ids(round_text, sp, -200, 1))
        instruction_len = len(reference_llava_ids(parts[0], sp, -200, 1)) - 2
        trained[cur : cur + instruction_len] = [False] * instruction_len
        cur += round_len
    trained[cur:] = [False] * (len(ids) - cur)
    return [t for t, i in zip(trained, ids)]


@requires_llama_vocab
def test_token_roles_equal_llava_label_masking_and_decode_to_the_spans(llama_processor, sentencepiece_llama):
    messages = QA_MULTI + [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "It is dark."}]
    out = llama_processor.tokenize_conversation(messages, system_prompt=SYS)
    prompt = render(llama_processor, messages)
    ids_576 = llama_processor(text=prompt, images=[PIL.Image.new("RGB", (8, 8))])["input_ids"][0]
    assert out["input_ids"] == ids_576
    # Compare with LLaVA's arithmetic on the sequence with one image position (it never looked at image ids).
    reference = reference_llava_v1_trained(prompt, sentencepiece_llama)
    image_at = out["input_ids"].index(32000)
    ours = [r > 0 for r in out["token_roles"]]
    ours = ours[: image_at + 1] + ours[image_at + 576 :]
    assert ours == reference

    sq = llama_processor.tokenize_conversation(QA_VUSER)
    tok = llama_processor.tokenizer
    spans = {1: [], 2: []}
    for token_id, role in zip(sq["input_ids"], sq["token_roles"]):
        if role:
            spans[role].append(token_id)
    assert tok.decode(spans[1]) == "A cat.</s> Yes.</s>"
    assert tok.decode(spans[2]) == "Is it black?</s>"
    assert sq["input_ids"][:2] == [1] + tok.encode(SQ, add_special_tokens=False)[:1]


@requires_llama_vocab
def test_assistant_tokens_mask_from_generation_blocks(llama_processor):
    image = PIL.Image.new("RGB", (8, 8))
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "vuser", "content": [{"type": "text", "text": "Is it black?"}]},
    ]
    out = llama_processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    roles = llama_processor.tokenize_conversation(messages)["token_roles"]
    assert list(out["assistant_masks"][0]) == [int(r > 0) for r in roles]


def test_tokenize_conversation_roles_on_the_tiny_tokenizer(tiny_processor):
    out = tiny_processor.tokenize_conversation(QA_VUSER)
    ids, roles = out["input_ids"], out["token_roles"]
    assert len(ids) == len(roles)
    assert ids.count(tiny_processor.image_token_id) == tiny_processor.image_seq_length
    assert all(r == 0 for i, r in zip(ids, roles) if i == tiny_processor.image_token_id)
    tok = tiny_processor.tokenizer
    assert tok.decode([i for i, r in zip(ids, roles) if r == 2]) == "Is it black?</s>"
    assert tok.decode([i for i, r in zip(ids, roles) if r == 1]).replace(" ", "") == "Acat.</s>Yes.</s>"
    eos = [k for k, i in enumerate(ids) if i == tok.eos_token_id]
    assert [roles[k] for k in eos] == [1, 2, 1]  # every trained span ends with its </s>
    # Same ids as the processor on the rendered prompt (SQ prompt by default for training).
    prompt = render(tiny_processor, QA_VUSER)
    assert ids == tiny_processor(text=prompt, images=[PIL.Image.new("RGB", (4, 4))])["input_ids"][0]
    plain = tiny_processor.tokenize_conversation(QA, mode="plain")
    assert plain["token_roles"][: 1 + 16] == [0] * 17
    assert tok.decode([i for i, r in zip(plain["input_ids"], plain["token_roles"]) if r == 1]) == "A cat.\n"
    assert set(plain["token_roles"][17:]) == {1}


def test_tokenize_conversation_encodes_once_without_jinja(tiny_processor, monkeypatch):
    """The training path renders in Python (no jinja) and encodes the whole conversation in one tokenizer pass,
    whatever its number of turns. (Its throughput is measured by `benchmarks/bench_collator.py`, not asserted.)"""
    import transformers.utils.chat_template_utils as chat_template_utils

    messages = [{"role": "user", "content": "<image>\nWhat colour is the large square at the top left?"}]
    for k in range(4):
        messages.append({"role": "assistant", "content": f"The square at the top left is red and there are {k} more."})
        messages.append({"role": "vuser" if k % 2 else "user", "content": "How many circles are near the center?"})
    messages.append({"role": "assistant", "content": "There are three circles near the center of the image."})
    expected = tiny_processor.tokenize_conversation(messages)
    tokenizer = tiny_processor.tokenizer
    encode, calls = tokenizer.encode_with_offsets, []

    def counting_encode(*args, **kwargs):
        calls.append(args)
        return encode(*args, **kwargs)

    def no_jinja(*args, **kwargs):
        raise AssertionError("tokenize_conversation rendered the jinja template")

    monkeypatch.setattr(tokenizer, "encode_with_offsets", counting_encode)
    monkeypatch.setattr(chat_template_utils, "render_jinja_template", no_jinja)
    assert tiny_processor.tokenize_conversation(messages) == expected
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------- images and calls


def reference_pixels(image: PIL.Image.Image, size: int) -> np.ndarray:
    """LLaVA-1.5 `expand2square` with the CLIP-mean colour, bicubic resize, centre crop, normalise (float64)."""
    image = image.convert("RGB")
    width, height = image.size
    background = tuple(int(x * 255) for x in CLIP_MEAN)
    side = max(width, height)
    square = PIL.Image.new("RGB", (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    resized = square.resize((size, size), PIL.Image.Resampling.BICUBIC)
    array = np.asarray(resized, dtype=np.float64) / 255.0
    return ((array - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)


def _test_image(mode: str) -> PIL.Image.Image:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, size=(30, 50, 4), dtype=np.uint8)  # 50 wide, 30 high: padded top and bottom
    image = PIL.Image.fromarray(rgba, "RGBA")
    if mode == "P":
        return image.convert("RGB").quantize(16)
    return image.convert(mode) if mode != "RGBA" else image


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK"])
def test_image_preprocessing_is_pad_to_square_with_mean_then_clip(tiny_processor, mode):
    image = _test_image(mode)
    pixels = tiny_processor(images=image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 56, 56)
    np.testing.assert_allclose(pixels[0].double().numpy(), reference_pixels(image, 56), atol=1e-5)
    # The padded band is the mean colour (122, 116, 104).
    band = (np.array([122, 116, 104]) / 255.0 - CLIP_MEAN) / CLIP_STD
    np.testing.assert_allclose(pixels[0, :, 0, 0].double().numpy(), band, atol=1e-5)


def test_rgba_drops_alpha_like_the_reference(tiny_processor):
    image = PIL.Image.new("RGBA", (20, 20), (200, 10, 10, 0))  # fully transparent red
    pixels = tiny_processor(images=image, return_tensors="np")["pixel_values"][0]
    red = (np.array([200, 10, 10]) / 255.0 - CLIP_MEAN) / CLIP_STD
    np.testing.assert_allclose(pixels[:, 28, 28], red, atol=1e-5)  # not composited on white


def test_image_inputs_path_numpy_and_pil_agree(tiny_processor, tmp_path):
    image = _test_image("RGB")
    path = tmp_path / "image.png"
    image.save(path)
    from_pil = tiny_processor(images=image, return_tensors="np")["pixel_values"]
    from_path = tiny_processor(images=str(path), return_tensors="np")["pixel_values"]
    from_numpy = tiny_processor(images=np.asarray(image), return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(from_pil, from_path)
    np.testing.assert_array_equal(from_pil, from_numpy)


def test_corrupt_or_missing_image_file_names_the_file(tiny_processor, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        tiny_processor(images=str(bad), text="<image>\nHi")
    with pytest.raises(ValueError, match="missing.png"):
        tiny_processor(images=str(tmp_path / "missing.png"), text="<image>\nHi")


def test_placeholder_image_mismatch_names_both_counts(tiny_processor):
    image = PIL.Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match=r"2 <image> placeholder\(s\) but 1 image"):
        tiny_processor(images=[image], text="<image><image>hi")
    with pytest.raises(ValueError, match=r"1 <image> placeholder\(s\) but 0 image"):
        tiny_processor(text="<image>hi")
    with pytest.raises(ValueError, match=r"\[1, 0\].*\[0, 1\]"):
        tiny_processor(images=[[], [image]], text=["<image>a", "b"])


def test_batch_padding_attention_mask_and_tensors(tiny_processor):
    image = PIL.Image.new("RGB", (8, 8))
    texts = ["<image>\nshort", "<image>\na much longer prompt about the red circle"]
    out = tiny_processor(images=[image, image], text=texts, padding=True, padding_side="left", return_tensors="pt")
    assert out["input_ids"].shape == out["attention_mask"].shape
    assert out["pixel_values"].shape == (2, 3, 56, 56)
    short = tiny_processor(images=image, text=texts[0])["input_ids"][0]
    pad = tiny_processor.tokenizer.pad_token_id
    n_pad = out["input_ids"].shape[1] - len(short)
    assert out["input_ids"][0].tolist() == [pad] * n_pad + short
    assert out["attention_mask"][0].tolist() == [0] * n_pad + [1] * len(short)
    assert (out["input_ids"] == tiny_processor.image_token_id).sum(1).tolist() == [16, 16]
    with pytest.raises(ValueError, match="image tokens"):
        tiny_processor(images=image, text=texts[0], truncation=True, max_length=5)


def test_post_process_generation_strips_tags_and_eos(tiny_processor):
    clean = tiny_processor.post_process_generation
    assert clean(" Is the circle red?</s> ASSISTANT: Yes") == "Is the circle red?"
    assert clean("VUSER: What shape is it?</s>") == "What shape is it?"
    assert clean("A red square. USER: and more") == "A red square."
    assert clean(["Yes.</s><pad><pad>", "ASSISTANT: No."]) == ["Yes.", "No."]


def test_multimodal_token_counts_for_engines(tiny_processor):
    # vLLM plans memory from these: every image becomes image_seq_length tokens and one pixel_values row.
    counts = tiny_processor._get_num_multimodal_tokens(image_sizes=[(30, 50), (1000, 20), (336, 336)])
    assert counts["num_image_tokens"] == [16, 16, 16] and counts["num_image_patches"] == [1, 1, 1]
    assert "num_image_tokens" in counts and "num_video_tokens" not in counts
    assert "num_image_tokens" not in tiny_processor._get_num_multimodal_tokens()
    images = [PIL.Image.new("RGB", size) for size in ((50, 30), (20, 1000))]
    out = tiny_processor(text="<image><image>", images=images, return_tensors="pt")
    assert out["pixel_values"].shape[0] == sum(counts["num_image_patches"][:2])
    assert int((out["input_ids"] == tiny_processor.image_token_id).sum()) == sum(counts["num_image_tokens"][:2])


def test_text_replacement_offsets_rebuild_the_processor_ids(tiny_processor):
    # What vLLM's Transformers backend does: tokenize the prompt, then replace each `<image>` id by the ids of its
    # `replacement` text. That must give the processor's own ids.
    tokenizer = tiny_processor.tokenizer
    prompts = [
        tiny_processor.apply_chat_template(QA[:1], add_generation_prompt=True),
        "<s>Two images: <image> and <image>\nWhich is red?",
    ]
    images = [[PIL.Image.new("RGB", (8, 8))], [PIL.Image.new("RGB", (8, 8))] * 2]
    out = tiny_processor(text=prompts, images=images, return_text_replacement_offsets=True, return_tensors="pt",
                         padding=True)  # fmt: skip
    assert torch.is_tensor(out["input_ids"]) and torch.is_tensor(out["pixel_values"])
    offsets = out["text_replacement_offsets"]
    assert [len(sample) for sample in offsets] == [1, 2]
    for prompt, sample, ids, mask in zip(prompts, offsets, out["input_ids"].tolist(), out["attention_mask"].tolist()):
        expanded, previous = "", 0
        for entry in sample:
            start, end = entry["span"]
            assert entry["type"] == "image" and prompt[start:end] == entry["text"] == "<image>"
            assert entry["replacement"] == "<image>" * tiny_processor.image_seq_length
            expanded += prompt[previous:start] + entry["replacement"]
            previous = end
            new_start, new_end = entry["new_span"]
            assert expanded[new_start:new_end] == entry["replacement"]
        expanded += prompt[previous:]
        engine_ids = []
        for token_id in tokenizer.encode(prompt):
            if token_id == tiny_processor.image_token_id:
                engine_ids += tokenizer.encode(sample[0]["replacement"], add_special_tokens=False)
            else:
                engine_ids.append(token_id)
        real = [token_id for token_id, keep in zip(ids, mask) if keep]
        assert engine_ids == real == tokenizer.encode(expanded)
    # Asked for inside `text_kwargs` too (how transformers' processors receive it), and absent otherwise.
    nested = tiny_processor(text=prompts[:1], images=images[:1], text_kwargs={"return_text_replacement_offsets": True})
    assert nested["text_replacement_offsets"] == offsets[:1]
    assert "text_replacement_offsets" not in tiny_processor(text=prompts[:1], images=images[:1])


def test_decode_round_trips(tiny_processor):
    ids = tiny_processor(text="Is there a red circle?")["input_ids"][0]
    assert tiny_processor.decode(ids, skip_special_tokens=True) == "Is there a red circle?"
    assert tiny_processor.batch_decode([ids], skip_special_tokens=True) == ["Is there a red circle?"]


# ------------------------------------------------------------------------------------------------ save and load


def _pythons() -> list[str]:
    """This interpreter and the other transformers environment, when present (`conftest.other_transformers_python`)."""
    other = other_transformers_python()
    return [sys.executable] + ([other] if other else [])


_LOAD_SCRIPT = """
import json, sys, PIL.Image
from transformers import AutoProcessor
p = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
msgs = [{"role": "user", "content": "<image>\\nWhat is it?"}, {"role": "assistant", "content": "A cat."}]
prompt = p.apply_chat_template(msgs[:1], add_generation_prompt=True, generation_role="vuser")
out = p(images=[PIL.Image.new("RGB", (50, 30), (9, 99, 199))], text=prompt, return_tensors="np")
print(json.dumps({"cls": type(p).__name__, "module": type(p).__module__, "seq": p.image_seq_length,
    "prompt": prompt, "ids": out["input_ids"][0].tolist(), "pixels": float(out["pixel_values"].sum()),
    "roles": p.tokenize_conversation(msgs)["token_roles"]}))
"""


@pytest.mark.parametrize("python", _pythons(), ids=lambda p: Path(p).parent.parent.name)
def test_save_and_load_as_remote_code_in_a_fresh_process(tiny_processor, tmp_path, python):
    folder = tmp_path / "processor"
    tiny_processor.save_pretrained(folder)
    assert (folder / "processing_sqllava.py").is_file() and (folder / "chat_template.jinja").is_file()
    config = json.loads((folder / "processor_config.json").read_text())
    assert config["auto_map"]["AutoProcessor"] == "processing_sqllava.SQLlavaProcessor"
    assert config["image_seq_length"] == 16
    loaded = run_fresh_python_json(python, _LOAD_SCRIPT, str(folder), workdir=tmp_path, timeout=120)
    assert loaded["cls"] == "SQLlavaProcessor" and loaded["module"].startswith("transformers_modules")
    assert loaded["seq"] == 16
    messages = [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "A cat."}]
    prompt = render(tiny_processor, messages[:1], add_generation_prompt=True, generation_role="vuser")
    assert loaded["prompt"] == prompt
    expected = tiny_processor(images=[PIL.Image.new("RGB", (50, 30), (9, 99, 199))], text=prompt, return_tensors="np")
    assert loaded["ids"] == expected["input_ids"][0].tolist()
    assert loaded["pixels"] == pytest.approx(float(expected["pixel_values"].sum()), rel=1e-5)
    assert loaded["roles"] == tiny_processor.tokenize_conversation(messages)["token_roles"]


def test_processor_rejects_tokenizer_without_image_token():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")))
    with pytest.raises(ValueError, match="add_sqllava_special_tokens"):
        SQLlavaProcessor(build_image_processor(56), tok)
    with pytest.raises(ValueError, match="image_seq_length"):
        add_sqllava_special_tokens(tok)
        SQLlavaProcessor(build_image_processor(56), tok, image_seq_length=0)
    assert torch.is_tensor(torch.zeros(1))  # torch is importable in the processor's environment
