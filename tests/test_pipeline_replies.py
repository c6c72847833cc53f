"""The replies of `pipeline("image-text-to-text")` through the processor's post-processing hook: no leading space.

The pipeline decodes the prompt and the full sequence with `processor.post_process_image_text_to_text` and cuts the
first off the second; the model's reply starts with the space it is trained to write after `ASSISTANT:`. Scripted
token ids stand in for a generation (a random tiny model writes anything). Runs under both transformers versions.
"""

from __future__ import annotations

import PIL.Image
import pytest
import torch


@pytest.fixture(scope="module")
def pipe_and_prompt(tiny_tokenizer):
    import copy

    from transformers import pipeline

    from recipes.tiny import build_tiny_model, build_tiny_processor

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.padding_side = "left"
    processor = build_tiny_processor(tokenizer)
    pipe = pipeline("image-text-to-text", model=build_tiny_model(tokenizer), processor=processor)
    image = PIL.Image.new("RGB", (20, 20))
    chat = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is it?"}]}]
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    input_ids = processor(images=image, text=prompt, return_tensors="pt")["input_ids"]
    return pipe, chat, input_ids


def _postprocess(pipe, chat, input_ids, reply: str, return_type, **kwargs):
    from transformers.pipelines.image_text_to_text import Chat  # defined there (4.57) or imported there (5.x)

    tokenizer = pipe.processor.tokenizer
    new = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokenizer.convert_ids_to_tokens(new[0]).startswith("▁"), "the reply's first token carries the space"
    sequence = torch.cat([input_ids, torch.tensor([new])], dim=1)
    outputs = {"generated_sequence": sequence, "prompt_text": Chat(chat), "input_ids": input_ids}
    return pipe.postprocess(outputs, return_type=return_type, **kwargs)[0]["generated_text"]


def test_pipeline_replies_start_with_the_reply_not_a_space(pipe_and_prompt):
    from transformers.pipelines.image_text_to_text import ReturnType

    pipe, chat, input_ids = pipe_and_prompt
    assert _postprocess(pipe, chat, input_ids, "Yes it is.", ReturnType.NEW_TEXT) == "Yes it is."
    full = _postprocess(pipe, chat, input_ids, "A red circle.", ReturnType.FULL_TEXT)
    assert full[-1] == {"role": "assistant", "content": "A red circle."}


def test_the_hook_decodes_like_the_tokenizer_otherwise(pipe_and_prompt):
    pipe, _, input_ids = pipe_and_prompt
    processor = pipe.processor
    prompt_text = processor.post_process_image_text_to_text(input_ids)[0]
    assert prompt_text == processor.tokenizer.batch_decode(input_ids, skip_special_tokens=True)[0]
    assert prompt_text.endswith("ASSISTANT:")  # nothing after the last tag: unchanged
    new_only = processor.tokenizer("It is red.", add_special_tokens=False)["input_ids"]
    assert processor.post_process_image_text_to_text(new_only) == "It is red."
    assert processor.post_process_image_text_to_text(torch.tensor([new_only, new_only])) == ["It is red."] * 2


def _vuser_prompt(pipe):
    """A chat after which the model asks (`generation_role="vuser"`), and its prompt ids."""
    image = PIL.Image.new("RGB", (20, 20))
    chat = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red circle."}]},
    ]
    prompt = pipe.processor.apply_chat_template(chat, add_generation_prompt=True, generation_role="vuser")
    assert prompt.endswith("VUSER:")
    return chat, pipe.processor(images=image, text=prompt, return_tensors="pt")["input_ids"]


@pytest.mark.skipif(
    not hasattr(__import__("transformers").PreTrainedTokenizerBase, "parse_response"),
    reason="transformers 4.x's image-text-to-text pipeline files every reply under role 'assistant' (no hook)",
)
def test_a_question_the_model_asks_comes_back_as_a_vuser_message(pipe_and_prompt):
    """transformers 5's pipeline parses the reply with the tokenizer's response template: after `VUSER:` the new
    message is the model's question (role `vuser`), after `ASSISTANT:` an answer; the text has no `</s>` either way."""
    from transformers.pipelines.image_text_to_text import ReturnType

    pipe, chat, input_ids = pipe_and_prompt
    assert pipe.processor.tokenizer.response_template is not None
    answer = _postprocess(pipe, chat, input_ids, "A red circle.", ReturnType.FULL_TEXT)
    assert answer[-1] == {"role": "assistant", "content": "A red circle."}
    vuser_chat, vuser_ids = _vuser_prompt(pipe)
    # The chat ends with an answer, so a new message is wanted, not a continuation of that answer.
    asked = _postprocess(
        pipe, vuser_chat, vuser_ids, "Is it on the left?", ReturnType.FULL_TEXT, continue_final_message=False
    )
    assert asked[-1] == {"role": "vuser", "content": "Is it on the left?"}
    assert asked[:-1] == vuser_chat
    new_text = _postprocess(pipe, vuser_chat, vuser_ids, "Is it on the left?", ReturnType.NEW_TEXT)
    assert new_text == "Is it on the left?"


def test_parse_response_reads_the_role_from_the_prompt(tiny_processor):
    tokenizer = tiny_processor.tokenizer
    if not hasattr(type(tokenizer).__mro__[1], "parse_response"):
        pytest.skip("transformers 4.x has no response parsing")
    prompts = ["... ASSISTANT: A.</s>VUSER:", "USER: Q ASSISTANT:"]
    parsed = tokenizer.parse_response([" Is it red?</s>", " Yes.</s>"], prefix=prompts)
    assert parsed == [{"role": "vuser", "content": "Is it red?"}, {"role": "assistant", "content": "Yes."}]
