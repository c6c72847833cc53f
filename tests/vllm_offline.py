"""Offline vLLM generation on an SQ-LLaVA folder, for tests/test_vllm.py.

Run as a script in the vLLM environment (vLLM spawns its engine in another process, hence the `__main__` guard):

    python tests/vllm_offline.py SPEC.json OUT.json

SPEC: `{"model": folder, "image": png path, "max_tokens": n, "requests": [{"prompt": text} | {"messages": [...]}]}`;
text prompts get the image as `multi_modal_data`, message lists go through `LLM.chat` (vLLM's own chat template
rendering, as the server does), a `{"type": "image_pil"}` part receiving the image. Generation is greedy with
`min_tokens = max_tokens` (EOS masked, as `min_new_tokens` does in `generate`). OUT: one
`{"prompt_token_ids", "token_ids"}` per request, in order.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> None:
    import PIL.Image
    from vllm import LLM, SamplingParams

    spec_path, out_path = argv
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    llm = LLM(
        model=spec["model"],
        model_impl="transformers",
        trust_remote_code=True,
        enforce_eager=True,
        dtype=spec.get("dtype", "float32"),
        max_model_len=spec.get("max_model_len", 512),
        limit_mm_per_prompt={"image": 1},
        seed=0,
    )
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], min_tokens=spec["max_tokens"])
    image = PIL.Image.open(spec["image"]).convert("RGB")
    results = []
    for request in spec["requests"]:
        if "prompt" in request:
            output = llm.generate({"prompt": request["prompt"], "multi_modal_data": {"image": image}}, params)[0]
        else:
            output = llm.chat(with_image(request["messages"], image), params)[0]
        results.append(
            {"prompt_token_ids": list(output.prompt_token_ids), "token_ids": list(output.outputs[0].token_ids)}
        )
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(results, handle)


def with_image(messages: list[dict], image) -> list[dict]:
    """Put the PIL image into the `{"type": "image_pil"}` parts (JSON cannot carry it)."""
    return [
        {
            **message,
            "content": [
                {"type": "image_pil", "image_pil": image} if part.get("type") == "image_pil" else part
                for part in message["content"]
            ]
            if isinstance(message["content"], list)
            else message["content"],
        }
        for message in messages
    ]


if __name__ == "__main__":
    main(sys.argv[1:])
