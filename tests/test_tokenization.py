"""SQLlavaTokenizer: transformers 4.31's slow Llama tokenizer for the checkpoint's `legacy` flag, for every client.

The ids are pinned by hand (from the issue and SentencePiece's pieces) and checked against a reference that runs
the `sentencepiece` package itself on the Llama-2 vocabulary fixture with 4.31's rule written out from its source:
split at the special tokens, `sp.encode` each segment; with `legacy=False` the first segment keeps its dummy-prefix
`▁` and every later segment that does not start with a space loses the `▁` of its first piece (looked up as a string:
a piece that does not exist without `▁` is `<unk>`). LLaVA's `tokenizer_image_token` tokenized every chunk between
`<image>`s as its own text. Then the flag's path through the folder: the processor, `AutoTokenizer` with remote code
in a fresh process (transformers 5.x and 4.57), the converter's and stage 1's tokenizers; and exactly one BOS.
"""

from __future__ import annotations

import copy
import json
import pickle
import re
import sys
from pathlib import Path

import PIL.Image
import pytest

from processing import (
    SQ_SYSTEM_PROMPT,
    SQLlavaProcessor,
    SQLlavaTokenizer,
    add_sqllava_special_tokens,
    build_image_processor,
)
from tests.conftest import other_transformers_python, requires_llama_vocab, run_fresh_python_json
from tests.test_processing import QA_MULTI, QA_VUSER, sentencepiece_from_gguf

SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2, "<image>": 32000, "<pad>": 32001}


def reference_431(text: str, sp, legacy: bool, bos: bool = False) -> list[int]:
    """transformers 4.31 `LlamaTokenizer(legacy=...)(text).input_ids` on one chunk (no `<image>` in it)."""
    if not legacy:
        text = "▁" + text.replace("▁", " ")  # 4.31 `tokenize`: marks the start of the text
    ids = [1] if bos else []
    for segment in re.split("(" + "|".join(map(re.escape, SPECIALS)) + ")", text):
        if not segment:
            continue
        if segment in SPECIALS:
            ids.append(SPECIALS[segment])
            continue
        is_first = not legacy and segment.startswith("▁")
        if is_first:
            segment = segment[1:]
        pieces = sp.encode(segment, out_type=str)
        if not legacy and not is_first and not segment.startswith(" ") and pieces and pieces[0].startswith("▁"):
            pieces = ([pieces[0][1:]] if len(pieces[0]) > 1 else []) + pieces[1:]
        ids.extend(sp.piece_to_id(piece) for piece in pieces)
    return ids


def reference_llava(prompt: str, sp, legacy: bool) -> list[int]:
    """LLaVA's `tokenizer_image_token`: every `<image>`-separated chunk tokenized alone (with its BOS), the BOS of
    later chunks dropped, one image id in between. A `<s>` opening the prompt is the BOS (LLaVA's prompts had none)."""
    prompt = prompt[len("<s>") :] if prompt.startswith("<s>") else prompt
    chunks = [reference_431(chunk, sp, legacy, bos=True) for chunk in prompt.split("<image>")]
    ids = chunks[0]
    for chunk in chunks[1:]:
        ids += [SPECIALS["<image>"]] + chunk[1:]
    return ids


@pytest.fixture(scope="module")
def sentencepiece_llama():
    return sentencepiece_from_gguf()


@pytest.fixture(scope="module")
def llama_fast(llama_tokenizer):
    tokenizer = copy.deepcopy(llama_tokenizer)
    add_sqllava_special_tokens(tokenizer)
    return tokenizer


@pytest.fixture(scope="module", params=[True, False], ids=["legacy", "non-legacy"])
def llama_sqllava(request, llama_fast):
    return SQLlavaTokenizer.from_tokenizer(llama_fast, legacy=request.param)


# ------------------------------------------------------------------------------------------- the 4.31 rule, pinned
PINNED = {
    # text: (legacy=True ids, legacy=False ids); add_special_tokens=False
    "</s>VUSER:": ([2, 478, 11889, 29901], [2, 29963, 11889, 29901]),  # ▁V USER : | V USER :
    "</s>USER:": ([2, 3148, 1001, 29901], [2, 3308, 1001, 29901]),  # ▁US ER : | US ER :
    # A segment starting with a space keeps its pieces: ▁ ▁A SS IST ANT : under both rules.
    "</s> ASSISTANT:": ([2, 29871, 319, 1799, 9047, 13566, 29901], [2, 29871, 319, 1799, 9047, 13566, 29901]),
    # The first segment keeps its dummy prefix under both: ▁A ▁cat .
    "A cat.</s>": ([319, 6635, 29889, 2], [319, 6635, 29889, 2]),
    # 4.31's docstring example: 869 is ▁. and 29889 is .
    "Hello <s>.": ([15043, 29871, 1, 869], [15043, 29871, 1, 29889]),
    # The text after <image> starts like a text (LLaVA's chunks): ▁ <0x0A> What
    "<image>\nWhat": ([32000, 29871, 13, 5618], [32000, 29871, 13, 5618]),
}


@requires_llama_vocab
@pytest.mark.parametrize("text", list(PINNED), ids=list(PINNED))
def test_pinned_ids_for_both_flags(llama_sqllava, sentencepiece_llama, text):
    expected = PINNED[text][0 if llama_sqllava.legacy else 1]
    ids = llama_sqllava(text, add_special_tokens=False)["input_ids"]
    assert ids == expected
    assert ids == reference_llava(text, sentencepiece_llama, llama_sqllava.legacy)[1:]  # without the BOS


@requires_llama_vocab
def test_non_legacy_unknown_piece_after_a_special_token_is_unk_as_in_4_31(llama_fast, sentencepiece_llama):
    # "▁Über" is one piece; "Über" is not a piece, so 4.31's lookup of the stripped string gives <unk> (0).
    tokenizer = SQLlavaTokenizer.from_tokenizer(llama_fast, legacy=False)
    assert sentencepiece_llama.encode("Über", out_type=str) == ["▁Über"]
    assert tokenizer("</s>Über", add_special_tokens=False)["input_ids"] == [2, 0]
    assert reference_431("</s>Über", sentencepiece_llama, legacy=False) == [2, 0]


@requires_llama_vocab
@pytest.mark.parametrize(
    "messages, kwargs",
    [
        (QA_VUSER, {}),  # ... A cat.</s>VUSER: Is it black?</s> ASSISTANT: Yes.</s>
        (QA_MULTI, {}),  # ... A cat.</s>USER: Is it black? ASSISTANT: Yes.</s>
        (QA_VUSER[:2], {"add_generation_prompt": True, "generation_role": "vuser"}),  # ... A cat.</s>VUSER:
        (QA_MULTI[:1], {"add_generation_prompt": True}),
        (QA_VUSER[:1], {"mode": "plain"}),
    ],
    ids=["vuser", "multi-turn", "ask", "answer", "plain"],
)
def test_processor_ids_equal_llava_on_4_31_for_both_flags(llama_sqllava, sentencepiece_llama, messages, kwargs):
    processor = SQLlavaProcessor(build_image_processor(336), llama_sqllava, image_seq_length=1)
    prompt = processor.apply_chat_template(messages, tokenize=False, **kwargs)
    assert prompt.startswith("<s>")
    expected = reference_llava(prompt, sentencepiece_llama, llama_sqllava.legacy)
    ids = processor(text=prompt, images=[PIL.Image.new("RGB", (8, 8))] * prompt.count("<image>"))["input_ids"][0]
    assert ids == expected
    # Every client of the folder's tokenizer gets the same ids, whether it adds special tokens or not.
    assert llama_sqllava(prompt)["input_ids"] == expected
    assert llama_sqllava(prompt, add_special_tokens=False)["input_ids"] == expected
    assert llama_sqllava.encode(prompt[len("<s>") :]) == expected
    # The training path (`tokenize_conversation`, the collator's; SQ system prompt by default) too.
    if not kwargs:
        rendered = processor.apply_chat_template(messages, tokenize=False, system_prompt=SQ_SYSTEM_PROMPT)
        expected = reference_llava(rendered, sentencepiece_llama, llama_sqllava.legacy)
        assert processor.tokenize_conversation(messages)["input_ids"] == expected


@requires_llama_vocab
def test_multi_turn_flags_differ_exactly_after_each_eos(llama_fast):
    legacy = SQLlavaTokenizer.from_tokenizer(llama_fast, legacy=True)
    modern = SQLlavaTokenizer.from_tokenizer(llama_fast, legacy=False)
    text = "<s>SYS USER: <image>\nQ? ASSISTANT: A.</s>USER: Why? ASSISTANT: So.</s>VUSER: Is it?</s> ASSISTANT:"
    a, b = legacy(text)["input_ids"], modern(text)["input_ids"]
    assert len(a) == len(b)
    after_eos = {i + 1 for i, token in enumerate(a[:-1]) if token == 2}
    differing = {i for i, (x, y) in enumerate(zip(a, b)) if x != y}
    # ▁US -> US after the first </s>, ▁V -> V after the second; " ASSISTANT" after the third starts with a space.
    assert differing == after_eos - {max(after_eos)}
    assert [(a[i], b[i]) for i in sorted(differing)] == [(3148, 3308), (478, 29963)]


# ----------------------------------------------------------------------------------------------- one BOS, always
def test_exactly_one_bos_from_the_template_the_processor_and_the_collator(tiny_processor):
    from recipes.collator import SelfQuestioningCollator

    tokenizer = tiny_processor.tokenizer
    bos = tokenizer.bos_token_id
    messages = [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "A cat."}]
    prompt = tiny_processor.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<s>") and prompt.count("<s>") == 1
    image = PIL.Image.new("RGB", (8, 8))
    for add in (True, False):
        ids = tiny_processor(text=prompt, images=image, add_special_tokens=add)["input_ids"][0]
        assert ids[0] == bos and ids[1] != bos
        assert tokenizer(prompt, add_special_tokens=add)["input_ids"].count(bos) == 1
    # Without the template's BOS, the tokenizer adds it (and only when asked).
    bare = prompt[len("<s>") :]
    assert tokenizer(bare)["input_ids"] == tokenizer(prompt)["input_ids"]
    assert bos not in tokenizer(bare, add_special_tokens=False)["input_ids"]
    mask = tokenizer(prompt, return_special_tokens_mask=True)["special_tokens_mask"]
    assert mask[0] == 0  # the BOS came from the text, not from add_special_tokens
    # apply_chat_template(tokenize=True) and the training collator.
    tokenized = tiny_processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Hi?"}]}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    assert list(tokenized["input_ids"][0][:2]).count(bos) == 1
    collator = SelfQuestioningCollator(tiny_processor, max_length=None)
    batch = collator([{"id": "a", "index": 0, "images": [image], "messages": messages}])
    assert batch["input_ids"][0, 0].item() == bos and batch["input_ids"][0, 1].item() != bos
    assert batch["labels"][0, 0].item() == -100


# ------------------------------------------------------------------------------------------ the flag's whole path
def test_missing_flag_means_legacy_and_the_flag_survives_save_and_load(tiny_tokenizer, tmp_path):
    from processing.tokenization_sqllava import legacy_flag

    fast = copy.deepcopy(tiny_tokenizer)
    fast.init_kwargs.pop("legacy", None)
    if hasattr(fast, "legacy"):
        fast.legacy = None
    assert legacy_flag(fast) is True
    for flag in (True, False):
        fast.init_kwargs["legacy"] = flag
        processor = SQLlavaProcessor(build_image_processor(56), fast, image_seq_length=16)
        assert processor.tokenizer.legacy is flag
        folder = tmp_path / f"legacy-{flag}"
        processor.save_pretrained(folder)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        assert config["legacy"] is flag and config["tokenizer_class"] == "SQLlavaTokenizer"
        assert config["auto_map"]["AutoTokenizer"][0] == "tokenization_sqllava.SQLlavaTokenizer"
        assert (folder / "tokenization_sqllava.py").is_file()
        reloaded = SQLlavaProcessor.from_pretrained(folder)
        # The package's class, not the folder's copy: nothing is imported from the folder.
        assert type(reloaded.tokenizer) is SQLlavaTokenizer and reloaded.tokenizer.legacy is flag
        text = "<s>A big red square.</s>USER: How many? ASSISTANT:"
        assert reloaded.tokenizer(text)["input_ids"] == processor.tokenizer(text)["input_ids"]


def test_a_folder_saved_before_the_tokenizer_class_loads_with_its_flag(tiny_processor, tmp_path):
    # What older exports hold: a fast Llama tokenizer's files, with no auto_map for the tokenizer.
    folder = tmp_path / "old"
    tiny_processor.save_pretrained(folder)
    (folder / "tokenization_sqllava.py").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("auto_map")
    config.update(tokenizer_class="LlamaTokenizer", legacy=False)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = SQLlavaProcessor.from_pretrained(folder)
    assert type(loaded.tokenizer) is SQLlavaTokenizer and loaded.tokenizer.legacy is False
    text = "A red square.</s>There are two.</s>VUSER:"
    legacy = tiny_processor.tokenizer(text)["input_ids"]
    expected = SQLlavaTokenizer.from_tokenizer(tiny_processor.tokenizer, legacy=False)(text)["input_ids"]
    assert loaded.tokenizer(text)["input_ids"] == expected != legacy


def test_decode_pickle_and_copy(tiny_processor, tiny_tokenizer):
    tokenizer = tiny_processor.tokenizer
    text = "<s>USER: <image>\nIs there a red circle? ASSISTANT: Yes, two.</s>"
    ids = tokenizer(text)["input_ids"]
    # Decoding is the fast Llama tokenizer's (same SentencePiece decoder), special tokens inline.
    assert tokenizer.decode(ids) == tiny_tokenizer.decode(ids)
    assert tokenizer.decode(ids, skip_special_tokens=True) == tiny_tokenizer.decode(ids, skip_special_tokens=True)
    # "USER: " ends with a lone ▁ and the text after <image> starts with one: two spaces.
    assert tokenizer.decode(ids, skip_special_tokens=True) == "USER:  \nIs there a red circle? ASSISTANT: Yes, two."
    for clone in (pickle.loads(pickle.dumps(tokenizer)), copy.deepcopy(tokenizer)):
        assert clone(text)["input_ids"] == ids
    # Character offsets in text order (the processor's trained-token roles rely on them): the BOS is the text's
    # "<s>", "<image>" and "</s>" are where they are, a word piece covers its word.
    encoded, offsets = tokenizer.encode_with_offsets(text)
    assert encoded == ids and offsets[0] == (0, 3) and offsets[-1] == (len(text) - 4, len(text))
    assert offsets[ids.index(tokenizer.convert_tokens_to_ids("<image>"))] == (text.index("<image>"), text.index("\n"))
    assert [start for start, _ in offsets] == sorted(start for start, _ in offsets)
    assert text[slice(*offsets[ids.index(tokenizer.convert_tokens_to_ids("▁red"))])] == " red"


def test_batch_padding_tensors_and_errors(tiny_processor, tiny_tokenizer):
    tokenizer = tiny_processor.tokenizer
    batch = tokenizer(["<s>a red circle", "two blue squares and a star"], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert (batch["input_ids"][:, 0] == tokenizer.bos_token_id).all()
    assert batch["attention_mask"][0].tolist()[-1] == 0  # right padding: the first text is shorter
    with pytest.raises(ValueError, match="tokenizer_file"):
        SQLlavaTokenizer()
    with pytest.raises(TypeError, match="legacy"):
        SQLlavaTokenizer.from_tokenizer(tiny_tokenizer, legacy="no")
    with pytest.raises(ValueError, match="fast"):
        SQLlavaTokenizer.from_tokenizer(object())


def _pythons() -> list[str]:
    other = other_transformers_python()
    return [sys.executable] + ([other] if other else [])


_AUTO_SCRIPT = """
import json, sys
from transformers import AutoTokenizer
t = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
text = sys.argv[2]
print(json.dumps({"cls": type(t).__name__, "module": type(t).__module__, "legacy": t.legacy,
    "ids": t(text)["input_ids"], "ids_nospecial": t(text, add_special_tokens=False)["input_ids"]}))
"""


@requires_llama_vocab
@pytest.mark.slow
@pytest.mark.parametrize("python", _pythons(), ids=lambda p: Path(p).parent.parent.name)
def test_autotokenizer_with_remote_code_gives_the_trained_ids_in_a_fresh_process(
    llama_fast, sentencepiece_llama, tmp_path, python
):
    # A non-legacy folder, as the released SQ-LLaVA (ShareGPT4V base) is.
    processor = SQLlavaProcessor(
        build_image_processor(336), SQLlavaTokenizer.from_tokenizer(llama_fast, legacy=False), image_seq_length=576
    )
    folder = tmp_path / "folder"
    processor.save_pretrained(folder)
    prompt = processor.apply_chat_template(QA_VUSER, tokenize=False)
    loaded = run_fresh_python_json(python, _AUTO_SCRIPT, str(folder), prompt, workdir=tmp_path, timeout=300)
    assert loaded["cls"] == "SQLlavaTokenizer" and loaded["module"].startswith("transformers_modules")
    assert loaded["legacy"] is False
    expected = reference_llava(prompt, sentencepiece_llama, legacy=False)
    assert loaded["ids"] == expected and loaded["ids_nospecial"] == expected
    assert 29963 in expected  # `V` of "VUSER" after </s>: the non-legacy rule was applied
    image = PIL.Image.new("RGB", (8, 8))
    ids = processor(text=prompt, images=image)["input_ids"][0]
    at = ids.index(32000)
    assert ids[: at + 1] + ids[at + 576 :] == expected


def _set_legacy(folder: Path, flag: bool | None) -> None:
    """Write `flag` into a saved tokenizer's config (None: remove it, as checkpoints from before 4.31 have none)."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.pop("legacy", None)
    if flag is not None:
        config["legacy"] = flag
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("flag", [False, None], ids=["legacy-false", "no-flag"])
def test_stage1_processor_keeps_the_flag_of_the_tokenizer_it_starts_from(tmp_path, flag):
    from transformers import CLIPVisionConfig

    from recipes.common import build_processor_from_towers
    from tests.test_convert import vicuna_like_tokenizer

    vision = tmp_path / "clip"
    CLIPVisionConfig(image_size=56, patch_size=14, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                     num_attention_heads=4).save_pretrained(vision)  # fmt: skip
    text = tmp_path / "vicuna"
    vicuna_like_tokenizer().save_pretrained(text)
    _set_legacy(text, flag)
    processor = build_processor_from_towers(str(vision), str(text))
    assert type(processor.tokenizer) is SQLlavaTokenizer
    assert processor.tokenizer.legacy is (True if flag is None else flag)
    processor.save_pretrained(tmp_path / "stage1")  # what stage 2 and the export start from
    assert SQLlavaProcessor.from_pretrained(tmp_path / "stage1").tokenizer.legacy is (True if flag is None else flag)


def test_converter_keeps_the_base_folders_flag(tmp_path):
    from hub_upload.convert_original import convert_original_checkpoint
    from tests.test_convert import NUM_PROTOTYPES, write_released_checkpoint

    released = write_released_checkpoint(tmp_path / "released")
    _set_legacy(Path(released["base"]), False)  # as ShareGPT4V's and Vicuna-v1.5's tokenizer_config.json
    output = tmp_path / "converted"
    convert_original_checkpoint(
        model_base=str(released["base"]), model_path=str(released["model_path"]), output_dir=str(output),
        dtype="float32", num_prototypes=NUM_PROTOTYPES, verify=False,
    )  # fmt: skip
    config = json.loads((output / "tokenizer_config.json").read_text())
    assert config["legacy"] is False and config["tokenizer_class"] == "SQLlavaTokenizer"
    assert (output / "tokenization_sqllava.py").read_bytes() == (
        Path(__file__).resolve().parents[1] / "processing" / "tokenization_sqllava.py"
    ).read_bytes()
    assert SQLlavaProcessor.from_pretrained(output).tokenizer.legacy is False
