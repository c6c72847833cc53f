"""`pipeline("image-text-to-text", model=folder, trust_remote_code=True)` end to end on the tiny SQ-LLaVA saved with
its processor, in a fresh process whose path does not contain the repository, under every transformers environment
of the repository (5.x and 4.57.x).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from tests.conftest import other_transformers_python, run_fresh_python_json


def _pythons() -> list[str]:
    """This interpreter and the other transformers environment, when present (`conftest.other_transformers_python`)."""
    other = other_transformers_python()
    return [sys.executable] + ([other] if other else [])


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    from recipes.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    # Generation pads batches on the left (pipelines pad with the tokenizer's `padding_side`).
    tokenizer.padding_side = "left"
    processor = build_tiny_processor(tokenizer)
    model = build_tiny_model(tokenizer)
    folder = tmp_path_factory.mktemp("tiny_sqllava")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    rng = np.random.default_rng(0)
    images = []
    for i, size in enumerate([(50, 30), (24, 40)]):
        path = folder.parent / f"image{i}.png"
        PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    return folder, images


_PIPELINE_SCRIPT = r"""
import json, sys, torch
from transformers import pipeline
folder, images = sys.argv[1], sys.argv[2:]
pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
questions = ["What colour is the square?", "How many circles are there?"]
chats = [[{"role": "user", "content": [{"type": "image", "path": img}, {"type": "text", "text": q}]}]
         for img, q in zip(images, questions)]
kw = dict(max_new_tokens=4, do_sample=False)
batched = pipe(text=chats, batch_size=2, return_full_text=False, generate_kwargs=kw)
single = [pipe(text=chat, return_full_text=False, generate_kwargs=kw) for chat in chats]
full = pipe(text=chats[0], generate_kwargs=kw)
proc, model = pipe.processor, pipe.model
direct = []
for img, q in zip(images, questions):
    prompt = proc.apply_chat_template([{"role": "user", "content": "<image>\n" + q}], add_generation_prompt=True)
    inputs = proc(images=[img], text=prompt, return_tensors="pt")
    out = model.generate(**inputs, **kw)
    direct.append(proc.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
print(json.dumps({
    "batched": [b[0]["generated_text"] if isinstance(b, list) else b["generated_text"] for b in batched],
    "single": [s[0]["generated_text"] if isinstance(s, list) else s["generated_text"] for s in single],
    "full": (full[0] if isinstance(full, list) else full)["generated_text"],
    "direct": direct,
    "processor": type(proc).__name__, "model": type(model).__name__,
}))
"""


@pytest.mark.parametrize("python", _pythons(), ids=lambda p: Path(p).parent.parent.name)
def test_pipeline_answers_a_batched_chat_with_images(saved_tiny, tmp_path, python):
    folder, images = saved_tiny
    result = run_fresh_python_json(
        python, _PIPELINE_SCRIPT, str(folder), *images, workdir=tmp_path, timeout=300, OMP_NUM_THREADS="1"
    )
    assert result["processor"] == "SQLlavaProcessor"
    assert result["model"] == "SQLlavaForConditionalGeneration"
    # return_full_text=False gives only the new text: the same as decoding model.generate's new tokens, batched
    # (left-padded) or not.
    assert all(isinstance(text, str) for text in result["batched"])
    assert result["single"] == result["direct"]
    assert result["batched"] == result["direct"]
    # Full text of a chat: the conversation with the generated assistant message appended.
    full = result["full"]
    assert isinstance(full, list) and full[-1]["role"] == "assistant"
    assert full[-1]["content"] == result["direct"][0]
