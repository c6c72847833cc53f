"""recipes/self_question.py: describe, ask with the vuser generation prompt, answer; dataset generation; CLI.

A random tiny model produces gibberish, so these tests check the structure, the prompts and sampling settings handed
to `generate`, seeding, the cleaning/deduplication of questions (with scripted generations), and that the generated
datasets load with the repository's loaders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL = {"max_new_tokens": 6, "describe_max_new_tokens": 6, "answer_max_new_tokens": 4}


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    from recipes.tiny import build_tiny_model

    return build_tiny_model(tiny_tokenizer)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from recipes.synthetic import generate_shapes_dataset

    paths = generate_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=0, num_eval=2, seed=0)
    return paths["images"]  # eval_000000.png, eval_000001.png


class GenerateSpy:
    """Records the inputs of each `generate` call; optionally replaces the sampled continuations with scripted text."""

    def __init__(self, generate, tokenizer, scripted: list[list[str]] | None = None):
        self.generate, self.tokenizer = generate, tokenizer
        self.scripted = list(scripted) if scripted is not None else None
        self.calls: list[dict] = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        if self.scripted is None or not kwargs.get("do_sample"):
            return self.generate(**kwargs)
        texts = self.scripted.pop(0)
        assert len(texts) == len(kwargs["input_ids"]), "scripted one continuation per prompt"
        tok = self.tokenizer
        rows = [tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for text in texts]
        width = max(len(r) for r in rows)
        new = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
        return torch.cat([kwargs["input_ids"], new], dim=1)


def image_path(folder, i: int = 0) -> str:
    return os.path.join(folder, f"eval_{i:06d}.png")


def test_describe_then_ask_with_vuser_prompt_then_answer(model, tiny_processor, image_folder, monkeypatch):
    """Three generate calls: greedy description (ASSISTANT:), sampled questions (VUSER:, paper settings), answers."""
    from processing import SQ_SYSTEM_PROMPT
    from recipes.self_question import SelfQuestioningResult, self_question

    spy = GenerateSpy(model.generate, tiny_processor.tokenizer)
    monkeypatch.setattr(model, "generate", spy)
    prompts: list[list[str]] = []
    processor_call = type(tiny_processor).__call__

    def record_prompts(self, *args, **kwargs):
        prompts.append(list(kwargs["text"]))
        return processor_call(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny_processor), "__call__", record_prompts)
    result = self_question(
        model, tiny_processor, image_path(image_folder), num_questions=3, answer=True, seed=0, **SMALL
    )

    assert isinstance(result, SelfQuestioningResult)
    assert len(result.questions) == 3 and result.num_empty == 0 and result.num_duplicate == 0
    for qa in result.questions:
        assert set(qa) == {"question", "answer"}
        assert isinstance(qa["question"], str) and qa["question"] and isinstance(qa["answer"], str)
    assert result.image == image_path(image_folder)

    describe, ask, answer = spy.calls
    assert describe["do_sample"] is False and describe["max_new_tokens"] == 6 and len(describe["input_ids"]) == 1
    assert (ask["do_sample"], ask["temperature"], ask["top_k"], ask["top_p"]) == (True, 1.2, 300, 0.95)
    assert ask["max_new_tokens"] == 6 and len(ask["input_ids"]) == 3
    assert answer["do_sample"] is False and answer["max_new_tokens"] == 4 and len(answer["input_ids"]) == 3
    decode = tiny_processor.tokenizer.decode
    for ids in ask["input_ids"]:
        assert decode(ids, skip_special_tokens=True).rstrip().endswith("VUSER:")
    for call in (describe, answer):
        for ids in call["input_ids"]:
            assert decode(ids, skip_special_tokens=True).rstrip().endswith("ASSISTANT:")

    # The exact texts: one conversation under the SQ system prompt, as the authors' v1_sq template renders it
    # (sqllava/conversation.py:51-60, 264-278: "USER: " q " ", "ASSISTANT: " a "</s>", then "VUSER:"), with their
    # description request (demo/visual_questioning.py:38); the answer step follows the trained vuser turn.
    request = "USER: <image>\nCan you describe the image in detail? ASSISTANT:"
    context = f"{request} {result.description}</s>"
    assert prompts[0] == [f"<s>{SQ_SYSTEM_PROMPT} {request}"]
    assert prompts[1] == [f"<s>{SQ_SYSTEM_PROMPT} {context}VUSER:"] * 3
    assert prompts[2] == [
        f"<s>{SQ_SYSTEM_PROMPT} {context}VUSER: {qa['question']}</s> ASSISTANT:" for qa in result.questions
    ]


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(model, tiny_processor, image_folder):
    from recipes.self_question import self_question

    state = torch.get_rng_state()
    first = self_question(model, tiny_processor, image_path(image_folder), num_questions=2, seed=3, **SMALL)
    assert torch.equal(torch.get_rng_state(), state)
    again = self_question(model, tiny_processor, image_path(image_folder), num_questions=2, seed=3, **SMALL)
    other = self_question(model, tiny_processor, image_path(image_folder), num_questions=2, seed=4, **SMALL)
    assert first == again
    assert first.description == other.description  # the description is greedy
    assert first.questions != other.questions
    assert all(qa["answer"] is None for qa in first.questions)


class ScriptedModel:
    """Stands in for a model in `self_question`: records each `generate` call and answers it with scripted text (a
    description for a greedy call, `Question N?` for each sampled row), so that default budgets cost nothing."""

    def __init__(self, tokenizer, description: str = "A red square."):
        self.tokenizer, self.description = tokenizer, description
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.calls: list[dict] = []

    def eval(self):
        return self

    def generate(self, **kwargs):
        self.calls.append(kwargs)
        rows = len(kwargs["input_ids"])
        sampled = [f"Question {len(self.calls)}.{i}?" for i in range(rows)]
        texts = sampled if kwargs["do_sample"] else [self.description] * rows
        tok = self.tokenizer
        ids = [tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for text in texts]
        width = max(map(len, ids))
        new = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in ids])
        return torch.cat([kwargs["input_ids"], new], dim=1)


def record_prompts(processor, monkeypatch) -> list[list[str]]:
    """The texts of every processor call, in order (one list per `generate` call of `self_question`)."""
    prompts: list[list[str]] = []
    processor_call = type(processor).__call__

    def recording(self, *args, **kwargs):
        prompts.append(list(kwargs["text"]))
        return processor_call(self, *args, **kwargs)

    monkeypatch.setattr(type(processor), "__call__", recording)
    return prompts


def test_defaults_are_the_authors_visual_sq_settings(tiny_processor, image_folder, monkeypatch):
    """demo/visual_questioning.py and sqllava/eval/visual_sq.py: "Can you describe the image in detail?" greedy with
    up to 1024 new tokens, then questions sampled at temperature 1.2, top-k 300, top-p 0.95, up to 300 new tokens,
    all under the self-questioning system prompt."""
    from processing import SQ_SYSTEM_PROMPT
    from recipes.self_question import self_question

    model = ScriptedModel(tiny_processor.tokenizer)
    prompts = record_prompts(tiny_processor, monkeypatch)
    result = self_question(model, tiny_processor, image_path(image_folder), num_questions=2, answer=True)
    describe, ask, answer = model.calls
    assert (describe["do_sample"], describe["num_beams"], describe["max_new_tokens"]) == (False, 1, 1024)
    assert (ask["do_sample"], ask["temperature"], ask["top_k"], ask["top_p"], ask["max_new_tokens"]) == (
        True, 1.2, 300, 0.95, 300,
    )  # fmt: skip
    assert answer["do_sample"] is False and answer["max_new_tokens"] == 300
    assert result.description == "A red square." and result.describe_prompt == "Can you describe the image in detail?"
    request = f"<s>{SQ_SYSTEM_PROMPT} USER: <image>\nCan you describe the image in detail? ASSISTANT:"
    assert prompts[0] == [request]
    assert prompts[1] == [f"{request} A red square.</s>VUSER:"] * 2
    assert prompts[2] == [f"{request} A red square.</s>VUSER: Question 2.{i}?</s> ASSISTANT:" for i in range(2)]


def test_a_given_system_prompt_and_describe_prompt_apply_to_every_step(tiny_processor, image_folder, monkeypatch):
    from recipes.self_question import self_question

    model = ScriptedModel(tiny_processor.tokenizer)
    prompts = record_prompts(tiny_processor, monkeypatch)
    self_question(
        model, tiny_processor, image_path(image_folder), num_questions=1, answer=True, system_prompt="Be brief.",
        describe_prompt="Describe the image briefly.",
    )  # fmt: skip
    request = "<s>Be brief. USER: <image>\nDescribe the image briefly. ASSISTANT:"
    assert prompts == [[request], [f"{request} A red square.</s>VUSER:"],
                       [f"{request} A red square.</s>VUSER: Question 2.0?</s> ASSISTANT:"]]  # fmt: skip


def test_questions_are_cleaned_and_empty_or_duplicate_ones_dropped_and_counted(
    model, tiny_processor, image_folder, monkeypatch
):
    """Role tags and what follows a next role tag are cut; empty and repeated questions are redrawn and counted."""
    from recipes.self_question import self_question

    scripted = [
        ["VUSER: Is it red?", "is it  RED?", ""],  # kept, duplicate (case/spacing), empty
        ["Where is the square? ASSISTANT: top", "Is it red?"],  # kept (cut at the tag), duplicate
        ["How many?"],
    ]
    original = model.generate
    spy = GenerateSpy(original, tiny_processor.tokenizer, scripted)
    monkeypatch.setattr(model, "generate", spy)
    result = self_question(
        model, tiny_processor, image_path(image_folder), num_questions=3, description="A cube.", **SMALL
    )
    assert [qa["question"] for qa in result.questions] == ["Is it red?", "Where is the square?", "How many?"]
    assert (result.num_empty, result.num_duplicate) == (1, 2)
    assert [len(c["input_ids"]) for c in spy.calls] == [3, 2, 1]  # description given: no describe call

    # Rounds run out: fewer questions are returned rather than looping forever.
    spy = GenerateSpy(original, tiny_processor.tokenizer, [["Same?", "same?"], ["SAME?"]])
    monkeypatch.setattr(model, "generate", spy)
    result = self_question(
        model, tiny_processor, image_path(image_folder), num_questions=2, description="A cube.", max_rounds=2, **SMALL
    )
    assert [qa["question"] for qa in result.questions] == ["Same?"] and result.num_duplicate == 2


def test_arguments_are_validated(model, tiny_processor, image_folder):
    from recipes.self_question import self_question

    with pytest.raises(ValueError, match="num_questions=0"):
        self_question(model, tiny_processor, image_path(image_folder), num_questions=0)
    with pytest.raises(ValueError, match="top_p=1.5"):
        self_question(model, tiny_processor, image_path(image_folder), top_p=1.5)
    with pytest.raises(ValueError, match="not found"):
        self_question(model, tiny_processor, image_path(image_folder, 99))


def test_generate_dataset_writes_loadable_llava_json_and_hf_dataset(
    model, tiny_processor, image_folder, tmp_path, monkeypatch
):
    import datasets

    from recipes.data import load_hf_dataset, load_llava_json
    from recipes.self_question import generate_dataset

    pushed = []
    monkeypatch.setattr(
        datasets.Dataset, "push_to_hub", lambda self, repo_id, **kw: pushed.append((repo_id, len(self)))
    )
    stats = generate_dataset(
        model,
        tiny_processor,
        image_folder,
        output_json=tmp_path / "sq.json",
        output_dataset=tmp_path / "sq-ds",
        push_to_hub="user/sq-shapes",
        num_questions=2,
        answer=True,
        seed=0,
        progress=False,
        **SMALL,
    )
    assert stats["num_images"] == 2 and stats["num_records"] == 2 and stats["num_questions"] == 4
    assert pushed == [("user/sq-shapes", 2)]

    raw = json.loads((tmp_path / "sq.json").read_text())
    assert [r["image"] for r in raw] == ["eval_000000.png", "eval_000001.png"]
    llava = load_llava_json(tmp_path / "sq.json", image_folder, strict=True)
    assert len(llava) == 2
    for record, sample in zip(raw, llava):
        assert sample["images"] == [os.path.join(image_folder, record["image"])]
        roles = [m["role"] for m in sample["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and len(roles) == 2 + 2 * 2
        assert sample["messages"][0]["content"] == "<image>\nCan you describe the image in detail?"

    on_disk = datasets.load_from_disk(str(tmp_path / "sq-ds"))
    assert on_disk.column_names == ["id", "images", "messages", "questions"] and len(on_disk) == 2
    row = on_disk[1]
    assert row["id"] == "eval_000001" and row["images"][0].size == (56, 56)
    assert [m["content"] for m in row["messages"]] == [m["content"] for m in llava[1]["messages"]]
    assert row["questions"] == [m["content"] for m in row["messages"][2::2]]
    # The collator's loader reads it too (images embedded, not pointing at local files).
    canonical = load_hf_dataset(tmp_path / "sq-ds", strict=True)
    assert len(canonical) == 2 and canonical[0]["images"][0].size == (56, 56)


def test_cli_writes_a_llava_json_dataset(tiny_tokenizer, tiny_processor, model, image_folder, tmp_path):
    """`python recipes/self_question.py ... --output data.json` from another folder, on a saved model."""
    from recipes.data import load_llava_json

    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tiny_processor.save_pretrained(model_dir)
    output = tmp_path / "data.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [
        sys.executable,
        str(REPO_ROOT / "recipes" / "self_question.py"),
        "--model",
        str(model_dir),
        "--images",
        image_folder,
        "--num-questions",
        "2",
        "--answer",
        "--max-new-tokens",
        "5",
        "--describe-max-new-tokens",
        "5",
        "--device",
        "cpu",
        "--output",
        str(output),
        "--seed",
        "1",
    ]
    process = subprocess.run(command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    stats = json.loads(process.stdout[process.stdout.index("{") :])
    assert stats["num_records"] == 2 and stats["num_questions"] == 4
    assert len(load_llava_json(output, image_folder, strict=True)) == 2


class _Killed(BaseException):
    """Stands for the job being killed: nothing after it runs (not an Exception, so nothing catches it)."""


def test_generate_dataset_streams_resumes_and_skips_unreadable_images(
    model, tiny_processor, image_folder, tmp_path, monkeypatch
):
    """Results reach the progress file as they are made: a run killed after two images keeps them, the same command
    resumes with the remaining images only, and one corrupt image among many is skipped and counted. The final
    dataset equals an uninterrupted run's (before, --output wrote nothing when killed or on one corrupt image)."""
    import shutil

    import recipes.self_question as sq

    folder = tmp_path / "images"
    shutil.copytree(image_folder, folder)
    shutil.copy(image_path(folder, 0), folder / "eval_000002.png")
    shutil.copy(image_path(folder, 1), folder / "eval_000003.png")
    (folder / "eval_000004.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")  # corrupt
    settings = dict(num_questions=1, answer=True, seed=3, progress=False, **SMALL)

    reference = sq.generate_dataset(model, tiny_processor, str(folder), output_json=tmp_path / "ref.json", **settings)
    assert reference["num_images"] == 5 and reference["num_records"] == 4 and reference["num_unreadable"] == 1
    assert "eval_000004.png" in reference["unreadable"][0]

    real, calls = sq.self_question, []

    def dies_on_the_third(*args, **kwargs):
        calls.append(kwargs["seed"])
        if len(calls) == 3:
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(sq, "self_question", dies_on_the_third)
    output = tmp_path / "sq.json"
    with pytest.raises(_Killed):
        sq.generate_dataset(model, tiny_processor, str(folder), output_json=output, **settings)
    assert not output.exists()
    lines = (tmp_path / "sq.json.progress.jsonl").read_text().splitlines()
    assert len(lines) == 3 and [json.loads(line)["image"] for line in lines[1:]] == ["eval_000000.png", "eval_000001.png"]
    with open(tmp_path / "sq.json.progress.jsonl", "a") as f:
        f.write('{"index": 2, "image": "eval_0000')  # a line cut short by the kill

    calls.clear()
    monkeypatch.setattr(sq, "self_question", lambda *a, **k: (calls.append(k["seed"]), real(*a, **k))[1])
    stats = sq.generate_dataset(model, tiny_processor, str(folder), output_json=output, **settings)
    assert calls == [3 + 2, 3 + 3]  # only the images not done yet, each with its own seed
    assert stats["num_resumed"] == 2 and stats["num_records"] == 4 and stats["num_unreadable"] == 1
    assert json.loads(output.read_text()) == json.loads((tmp_path / "ref.json").read_text())
    with pytest.raises(ValueError, match=r"other settings \(num_questions: 1 in the file, 2 now"):
        sq.generate_dataset(model, tiny_processor, str(folder), output_json=output, **{**settings, "num_questions": 2})


def test_cli_flags_cannot_be_abbreviated():
    from recipes.self_question import parse_args

    assert parse_args(["--model", "m", "--images", "x", "--num-questions", "2"]).num_questions == 2
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--images", "x", "--num-q", "2"])
