"""recipes.eval prompts: byte-identical to what LLaVA's answering scripts build from the same files in conv mode v1.

Every expected string below is derived by hand from LLaVA's code (haotian-liu/LLaVA, llava/eval/*.py and
llava/conversation.py; SQ-LLaVA's copies are the same for these paths):

- `conv_vicuna_v1` (conv modes "v1" and "vicuna_v1"), SeparatorStyle.TWO with sep " ": one user turn `qs` and the open
  assistant turn render as `SYSTEM + " " + "USER: " + qs + " " + "ASSISTANT:"`;
- `model_vqa_loader.py` / `model_vqa.py`: `qs = "<image>" + "\\n" + line["text"]` (no strip), `prompt` = `text`;
- `model_vqa_science.py --single-pred-prompt`: `qs = value.replace("<image>", "").strip()`, `"<image>\\n" + qs` when
  the record has an "image" key, then `+ "\\n" + "Answer with the option's letter from the given choices directly."`;
  its `prompt` field carries the same text;
- `model_vqa_mmbench.py --single-pred-prompt --all-rounds`: `hint + "\\n" + question` when the hint is not none, then
  `"\\n" + letter + ". " + option` per option (A, B, ... for the rotated options), `"<image>\\n"` in front, and the
  English or Chinese (`--lang cn`) suffix; `prompt` is the question with options, without `<image>` or suffix.

The chat template may start the text with the BOS token `<s>` (as transformers' templates do): the pins compare the
text after an optional leading `<s>`, and the token ids (BOS exactly once) are pinned through the processor.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os

import PIL.Image
import pytest

from tests.conftest import requires_llama_vocab
from tests.test_processing import reference_llava_ids, sentencepiece_llama  # noqa: F401  (the fixture, reused)

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
    "and polite answers to the user's questions."
)
SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."


def llava_v1(qs: str) -> str:
    """conv_vicuna_v1.get_prompt() for one user message `qs` and the open assistant turn."""
    return SYSTEM + " " + "USER: " + qs + " " + "ASSISTANT:"


def without_bos(text: str) -> str:
    return text.removeprefix("<s>")


def prompts(processor, benchmark_name: str, root: str, **kwargs) -> list[tuple[dict, str]]:
    from recipes.eval.answering import build_prompt
    from recipes.eval.common import get_benchmark

    benchmark = get_benchmark(benchmark_name)
    split = kwargs.pop("split", None)
    questions = benchmark.load_questions(root, benchmark.resolve_split(split), **kwargs)
    return [(q.row, without_bos(build_prompt(processor, q))) for q in questions]


def write_jsonl(path, rows) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def write_json(path, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


# A text with the odd bytes real question files carry: trailing spaces, an inner blank line, non-ASCII.
ODD = "What is written on the café sign?  \n\nIt is small."


@pytest.mark.parametrize(
    "name, relative",
    [
        ("gqa", "gqa/llava_gqa_testdev_balanced.jsonl"),
        ("textvqa", "textvqa/llava_textvqa_val_v051_ocr.jsonl"),
        ("pope", "pope/llava_pope_test.jsonl"),
        ("vizwiz", "vizwiz/llava_test.jsonl"),
        ("vqav2", "vqav2/llava_vqav2_mscoco_test-dev2015.jsonl"),
        ("llava_bench", "llava-bench-in-the-wild/questions.jsonl"),
        ("mmvet", "mm-vet/llava-mm-vet.jsonl"),
    ],
)
def test_loader_benchmarks_ask_the_question_file_text_verbatim(tiny_processor, tmp_path, name, relative):
    """model_vqa_loader.py / model_vqa.py: "<image>\\n" + text, not stripped; the answer's prompt is the text."""
    texts = [f"Is the cat black?\n{SHORT}", ODD, f"what does it say?\nReference OCR token: stop, red\n{SHORT}"]
    rows = [{"question_id": i, "image": f"{i}.jpg", "text": t, "category": "random"} for i, t in enumerate(texts)]
    write_jsonl(tmp_path / relative, rows)
    got = prompts(tiny_processor, name, str(tmp_path))
    assert [p for _, p in got] == [llava_v1("<image>\n" + t) for t in texts]
    assert [row["prompt"] for row, _ in got] == texts
    # The full first pin, written out once.
    assert got[0][1] == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nIs the cat black?\n"
        "Answer the question using a single word or phrase. ASSISTANT:"
    )


def test_vqav2_and_vizwiz_val_questions_are_worded_as_llavas_test_files(tiny_processor, tmp_path):
    """--split val builds the question text from the official files with LLaVA's suffixes."""
    write_json(tmp_path / "vqav2/v2_OpenEnded_mscoco_val2014_questions.json",
               {"questions": [{"image_id": 42, "question": "Where is he looking?", "question_id": 42000}]})  # fmt: skip
    write_json(tmp_path / "vizwiz/val.json", [{"image": "VizWiz_val_00000007.jpg", "question": "What is this?",
                                               "answers": [{"answer": "a can"}] * 10}])  # fmt: skip
    vqa = prompts(tiny_processor, "vqav2", str(tmp_path), split="val")
    assert vqa == [
        ({"question_id": 42000, "prompt": f"Where is he looking?\n{SHORT}"},
         llava_v1(f"<image>\nWhere is he looking?\n{SHORT}"))
    ]  # fmt: skip
    vizwiz = prompts(tiny_processor, "vizwiz", str(tmp_path), split="val")
    text = "What is this?\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT
    assert vizwiz == [({"question_id": "VizWiz_val_00000007.jpg", "prompt": text}, llava_v1("<image>\n" + text))]

    from recipes.eval.common import get_benchmark

    question = get_benchmark("vqav2").load_questions(str(tmp_path), "val")[0]
    assert question.image == "COCO_val2014_000000000042.jpg"


def test_scienceqa_prompt_is_model_vqa_science_single_pred_prompt(tiny_processor, tmp_path):
    value = "Context: A cat.\nQuestion: Which is a mammal?\nOptions: (A) cat (B) trout\n<image>\n"
    records = [
        {"id": "5", "conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": "A"}],
         "image": "5/image.png"},
        {"id": "6", "conversations": [{"from": "human", "value": "  Question: 2+2?\nOptions: (A) 3 (B) 4 "}]},
    ]  # fmt: skip
    write_json(tmp_path / "scienceqa/llava_test_CQM-A.json", records)
    got = prompts(tiny_processor, "scienceqa", str(tmp_path))
    qs_image = "Context: A cat.\nQuestion: Which is a mammal?\nOptions: (A) cat (B) trout"
    qs_text = "Question: 2+2?\nOptions: (A) 3 (B) 4"
    assert got[0][1] == llava_v1("<image>\n" + qs_image + "\n" + LETTER)
    assert got[0][0]["prompt"] == "<image>\n" + qs_image + "\n" + LETTER
    # A question without an image is asked as text, as model_vqa_science.py does.
    assert got[1][1] == llava_v1(qs_text + "\n" + LETTER)
    assert got[1][0] == {"question_id": "6", "prompt": qs_text + "\n" + LETTER}


def _png_base64() -> str:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (4, 4), (1, 2, 3)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def write_tsv(path, rows) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"])
        writer.writerows(rows)


def test_mmbench_prompts_every_rotation_with_hint_and_options(tiny_processor, tmp_path):
    image = _png_base64()
    write_tsv(tmp_path / "mmbench/mmbench_dev_20230712.tsv", [
        [7, "What colour?", "A hint.", "red", "green", "blue", "", "B", "c", image],
        # pandas reads "N/A" and "None" as missing, and LLaVA's is_none also takes "nan"/"none" in any case.
        [8, "Which?", "N/A", "yes", "no", "None", "x", "A", "c", image],
    ])  # fmt: skip
    got = prompts(tiny_processor, "mmbench", str(tmp_path))
    question = "A hint.\nWhat colour?"
    expected = [
        (question + "\nA. red\nB. green\nC. blue", ["red", "green", "blue"], ["A", "B", "C"]),
        (question + "\nA. green\nB. blue\nC. red", ["green", "blue", "red"], ["B", "C", "A"]),
        (question + "\nA. blue\nB. red\nC. green", ["blue", "red", "green"], ["C", "A", "B"]),
        ("Which?\nA. yes\nB. no", ["yes", "no"], ["A", "B"]),
        ("Which?\nA. no\nB. yes", ["no", "yes"], ["B", "A"]),
    ]
    assert len(got) == len(expected)
    for round_id, ((row, prompt), (text, options, chars)) in enumerate(zip(got, expected)):
        assert prompt == llava_v1("<image>\n" + text + "\n" + LETTER)
        assert row == {"question_id": 7 if round_id < 3 else 8, "round_id": round_id if round_id < 3 else round_id - 3,
                       "prompt": text, "options": options, "option_char": chars}  # fmt: skip

    # Without --all-rounds only round 0 is asked.
    assert len(prompts(tiny_processor, "mmbench", str(tmp_path), all_rounds=False)) == 2


def test_mmbench_cn_uses_the_chinese_suffix(tiny_processor, tmp_path):
    write_tsv(tmp_path / "mmbench/mmbench_dev_cn_20231003.tsv",
              [[0, "图中是什么？", "nan", "猫", "狗", "", "", "A", "c", _png_base64()]])  # fmt: skip
    got = prompts(tiny_processor, "mmbench_cn", str(tmp_path), all_rounds=False)
    assert got[0][1] == llava_v1("<image>\n图中是什么？\nA. 猫\nB. 狗\n请直接回答选项字母。")


def test_only_conv_mode_v1_is_accepted():
    from recipes.eval.answering import check_conv_mode

    check_conv_mode("v1")
    check_conv_mode("vicuna_v1")  # the same conv_vicuna_v1 object in LLaVA's conv_templates
    for mode in ("llava_v1", "v1_sq", "plain", "chatml_direct"):
        with pytest.raises(ValueError, match="conv mode 'v1'"):
            check_conv_mode(mode)


@requires_llama_vocab
def test_prompt_ids_have_one_bos_and_equal_llavas_tokenizer_image_token(
    tmp_path,
    llama_tokenizer,
    sentencepiece_llama,  # noqa: F811  (the fixture imported above)
):
    """Through the processor with the real Llama vocabulary: BOS once, 576 image ids, then LLaVA's ids exactly."""
    from processing import SQLlavaProcessor, add_sqllava_special_tokens, build_image_processor

    tokenizer = llama_tokenizer
    add_sqllava_special_tokens(tokenizer)
    processor = SQLlavaProcessor(build_image_processor(336), tokenizer, image_seq_length=576)
    write_jsonl(tmp_path / "gqa/llava_gqa_testdev_balanced.jsonl",
                [{"question_id": "1", "image": "a.jpg", "text": f"Is the cat black?\n{SHORT}"}])  # fmt: skip
    write_tsv(tmp_path / "mmbench/mmbench_dev_cn_20231003.tsv",
              [[0, "图中是什么？", "提示", "猫", "狗", "", "", "A", "c", _png_base64()]])  # fmt: skip
    for name in ("gqa", "mmbench_cn"):
        (_, prompt), *_ = prompts(processor, name, str(tmp_path))
        ids = processor(text=prompt, images=[PIL.Image.new("RGB", (8, 8))])["input_ids"][0]
        assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
        assert ids.count(32000) == 576
        assert ids == reference_llava_ids(without_bos(prompt), sentencepiece_llama, 32000, 576)
