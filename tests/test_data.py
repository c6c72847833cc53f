"""Data loading: LLaVA JSON validation and normalisation, HF datasets, mixtures, images, length-grouped sampling."""

from __future__ import annotations

import json
import logging
import pickle
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recipes.data import (
    BadRecordError,
    ConversationDataset,
    MixtureDataset,
    ModalityLengthGroupedSampler,
    SkipStats,
    get_modality_length_grouped_indices,
    load_hf_dataset,
    load_image,
    load_llava_json,
)


def _png(path: Path, color=(10, 20, 30), mode="RGB", size=(8, 8)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return str(path)


def _conv(*values):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


@pytest.fixture()
def image_folder(tmp_path):
    folder = tmp_path / "imgs"
    _png(folder / "a.png")
    _png(folder / "b.png")
    return folder


GOOD = {"id": "good", "image": "a.png", "conversations": _conv("<image>\nWhat is it?", "A square.")}
# One record per skip reason; each test below checks its reason.
BAD_RECORDS = {
    "missing_image": {"id": "miss", "image": "nope.png", "conversations": _conv("<image>\nQ?", "A.")},
    "non_alternating": {"id": "alt", "image": "a.png", "conversations": _conv("<image>\nQ?", "A.", "B.")[:1] * 2},
    "starts_with_gpt": {
        "id": "gptfirst",
        "conversations": [{"from": "gpt", "value": "Hi."}, {"from": "human", "value": "Q?"}],
    },
    "ends_with_human": {"id": "dangling", "image": "a.png", "conversations": _conv("<image>\nQ?", "A.", "More?")},
    "empty_text": {"id": "empty", "image": "a.png", "conversations": _conv("<image>\nQ?", "   ")},
    "missing_token": {"id": "notoken", "image": "a.png", "conversations": _conv("What is it?", "A square.")},
    "extra_token": {"id": "twotokens", "image": "a.png", "conversations": _conv("<image> <image>\nQ?", "A.")},
    "token_later_turn": {
        "id": "late",
        "image": "a.png",
        "conversations": _conv("<image>\nQ?", "A.", "<image>\nAnd this?", "B."),
    },
    "token_text_only": {"id": "textonly_token", "conversations": _conv("<image>\nQ?", "A.")},
    "lone_surrogate": {"id": "surrogate", "image": "a.png", "conversations": _conv("<image>\nQ \ud800?", "A.")},
    "no_conversations": {"id": "noconv", "image": "a.png"},
    "bad_image_field": {"id": "imgint", "image": 5, "conversations": _conv("<image>\nQ?", "A.")},
}
EXPECTED_REASON = {
    "missing_image": "missing_image",
    "non_alternating": "non_alternating",
    "starts_with_gpt": "non_alternating",
    "ends_with_human": "non_alternating",
    "empty_text": "empty_text",
    "missing_token": "image_token_mismatch",
    "extra_token": "image_token_mismatch",
    "token_later_turn": "image_token_mismatch",
    "token_text_only": "image_token_mismatch",
    "lone_surrogate": "non_utf8",
    "no_conversations": "malformed_record",
    "bad_image_field": "malformed_record",
}


def _write(tmp_path: Path, records, name="data.json") -> Path:
    path = tmp_path / name
    # ensure_ascii keeps lone surrogates as "\ud800" escapes: valid JSON text that decodes to invalid Unicode.
    path.write_text(json.dumps(records, ensure_ascii=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", list(BAD_RECORDS))
def test_each_bad_record_is_skipped_counted_and_strict_raises(tmp_path, image_folder, kind):
    path = _write(tmp_path, [GOOD, BAD_RECORDS[kind], GOOD | {"id": "good2"}])
    stats = SkipStats()
    ds = load_llava_json(path, image_folder, stats=stats)
    assert [ds[i]["id"] for i in range(len(ds))] == ["good", "good2"]
    assert stats.as_dict()["counts"] == {EXPECTED_REASON[kind]: 1}
    assert stats.as_dict()["examples"] == {EXPECTED_REASON[kind]: [BAD_RECORDS[kind]["id"]]}
    assert ds.skip_stats.total == 1

    with pytest.raises(ValueError, match=EXPECTED_REASON[kind]) as info:
        load_llava_json(path, image_folder, strict=True)
    assert repr(BAD_RECORDS[kind]["id"]) in str(info.value)
    assert isinstance(info.value, BadRecordError) and info.value.reason == EXPECTED_REASON[kind]


def test_all_bad_kinds_together_and_report(tmp_path, image_folder, caplog):
    path = _write(tmp_path, [GOOD, *BAD_RECORDS.values()])
    stats = SkipStats()
    with caplog.at_level(logging.WARNING, logger="recipes.data"):
        ds = load_llava_json(path, image_folder, stats=stats)
    assert len(ds) == 1
    assert stats.as_dict()["counts"] == dict(Counter(EXPECTED_REASON.values()))
    assert f"skipped {len(BAD_RECORDS)} of {len(BAD_RECORDS) + 1} samples" in caplog.text
    assert "image_token_mismatch" in caplog.text
    out = tmp_path / "out" / "skipped.json"
    stats.write_json(out)
    assert json.loads(out.read_text()) == stats.as_dict()


def test_invalid_utf8_bytes_are_skipped_not_fatal(tmp_path, image_folder):
    good = json.dumps(GOOD).encode()
    bad = json.dumps({"id": "latin1", "image": "a.png", "conversations": _conv("<image>\nCAFE?", "A.")}).encode()
    bad = bad.replace(b"CAFE", b"caf\xe9")  # latin-1 byte, invalid UTF-8
    path = tmp_path / "bytes.json"
    path.write_bytes(b"[" + good + b"," + bad + b"]")
    stats = SkipStats()
    ds = load_llava_json(path, image_folder, stats=stats)
    assert len(ds) == 1 and stats.as_dict()["counts"] == {"non_utf8": 1}
    with pytest.raises(ValueError, match=r"id='latin1'.*non_utf8"):
        load_llava_json(path, image_folder, strict=True)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("What is it?\n<image>", "<image>\nWhat is it?"),
        ("<image>\nWhat is it?", "<image>\nWhat is it?"),
        ("  What <image> is it?  ", "<image>\nWhat  is it?"),
        ("<image>", "<image>"),  # image only: LLaVA strips the joined value, so no newline (USER: <image> ASSISTANT:)
    ],
)
def test_image_token_moves_to_front(tmp_path, image_folder, value, expected):
    path = _write(tmp_path, [{"id": "x", "image": "a.png", "conversations": _conv(value, "A.")}])
    record = load_llava_json(path, image_folder, strict=True)[0]
    assert record["messages"] == [{"role": "user", "content": expected}, {"role": "assistant", "content": "A."}]
    assert record["images"] == [str(image_folder / "a.png")]
    assert record["index"] == 0 and record["id"] == "x"


def test_text_only_multi_image_lengths_and_jsonl(tmp_path, image_folder):
    records = [
        {"id": 1, "conversations": _conv("Hello there", "General Kenobi", "You are bold", "Yes")},
        {"id": 2, "image": ["a.png", "b.png"], "conversations": _conv("Compare <image> and <image>", "Same.")},
        GOOD,
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\nnot json\n")
    stats = SkipStats()
    ds = load_llava_json(path, image_folder, stats=stats)
    assert stats.as_dict()["counts"] == {"malformed_record": 1}
    text_only, two_images = ds[0], ds[1]
    assert ds[2]["id"] == "good"
    assert text_only["images"] == [] and text_only["id"] == "1"
    assert text_only["messages"][0] == {"role": "user", "content": "Hello there"}
    assert two_images["messages"][0]["content"] == "<image>\n<image>\nCompare  and"
    assert len(two_images["images"]) == 2
    # LLaVA's estimate: words of all turns (+128 per image); negative for text-only samples.
    assert ds.lengths == [2 + 2 + 3 + 1, 4 + 1 + 2 * 128, 4 + 2 + 128]
    assert ds.modality_lengths == [-8, 4 + 1 + 256, 4 + 2 + 128]
    assert [ds[i]["index"] for i in range(3)] == [0, 1, 2]


def test_jsonl_record_with_unicode_line_separators_is_one_record(tmp_path, image_folder):
    """JSON strings may hold U+2028 / U+2029 / U+0085 unescaped (`ensure_ascii=False` writes them so): a JSON Lines
    record ends at the newline only, so such a record is one record, not two malformed lines."""
    text = "Line one\u2028line two\u2029three\x85four"
    records = [{"id": "sep", "conversations": _conv(text, "Yes.")}, GOOD]
    path = tmp_path / "separators.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    assert "\u2028" in path.read_text(encoding="utf-8")  # written unescaped
    stats = SkipStats()
    ds = load_llava_json(path, image_folder, stats=stats)
    assert stats.total == 0 and stats.seen == 2
    assert len(ds) == 2 and ds[0]["id"] == "sep" and ds[1]["id"] == "good"
    assert ds[0]["messages"][0] == {"role": "user", "content": text}


def test_default_image_folder_and_max_samples(tmp_path):
    _png(tmp_path / "a.png")
    path = _write(tmp_path, [GOOD | {"id": str(i)} for i in range(5)])
    ds = load_llava_json(path, max_samples=3)
    assert len(ds) == 3 and ds[2]["images"] == [str(tmp_path / "a.png")]
    with pytest.raises(ValueError, match="json_path"):
        load_llava_json(tmp_path / "absent.json")


def test_records_are_fresh_copies(tmp_path, image_folder):
    ds = load_llava_json(_write(tmp_path, [GOOD]), image_folder)
    ds[0]["messages"][0]["content"] = "mutated"
    ds[0]["images"].append("x")
    assert ds[0]["messages"][0]["content"] == "<image>\nWhat is it?" and len(ds[0]["images"]) == 1
    assert isinstance(ds, torch.utils.data.Dataset)
    assert pickle.loads(pickle.dumps(ds))[0] == ds[0]


def test_large_json_loads_without_a_filesystem_call_or_decode_per_record(tmp_path, monkeypatch):
    """Loading scales with the folders, not the records: existence checks come from one `os.scandir` per image
    folder (665K `stat` calls cost minutes on network storage) and no image is opened at load time (the collator
    decodes them lazily, in dataloader workers). Throughput itself is measured by benchmarks, not asserted here."""
    import os

    import recipes.data as data_module

    _png(tmp_path / "img" / "x.png")
    n = 20_000
    conv = _conv(
        "<image>\nWhat is the man doing in the picture?", "He is riding a horse on the beach.", "Why?", "Fun."
    )
    path = _write(tmp_path, [{"id": f"{i:09d}", "image": "img/x.png", "conversations": conv} for i in range(n)])
    calls = Counter()

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(os, "scandir", counting("scandir", os.scandir))
    monkeypatch.setattr(os, "stat", counting("stat", os.stat))
    monkeypatch.setattr(data_module.Image, "open", counting("Image.open", data_module.Image.open))
    ds = load_llava_json(path, tmp_path, strict=True)
    assert len(ds) == n
    assert calls["scandir"] == 1, calls
    assert calls["stat"] < 50, calls  # a few for the JSON file and the folders, never one per record
    assert calls["Image.open"] == 0, calls


# ----------------------------------------------------------------------------------------------------------------------
# SkipStats
# ----------------------------------------------------------------------------------------------------------------------


def test_skip_stats_merge_pickle_examples():
    a, b = SkipStats(max_examples=2), SkipStats(max_examples=2)
    for i in range(3):
        a.add("missing_image", f"a{i}")
    b.add("missing_image", "b0")
    b.add("empty_text", "b1")
    merged = pickle.loads(pickle.dumps(a + b))
    a.seen, b.seen = 10, 4
    b.add("empty_text", "b2", detail="turn 1 is empty")
    merged = pickle.loads(pickle.dumps(a + b))
    assert merged.as_dict() == {
        "total": 6,
        "seen": 14,
        "counts": {"empty_text": 2, "missing_image": 4},
        "examples": {"empty_text": ["b1", "b2"], "missing_image": ["a0", "a1"]},
        "details": {"empty_text": "b2: turn 1 is empty"},
    }
    assert merged.fraction == pytest.approx(6 / 14)
    assert SkipStats.from_dict(merged.as_dict(), max_examples=2) == merged
    assert a.total == 3 and a.seen == 10  # `+` leaves its operands alone
    a.merge(b)
    assert a == merged
    with pytest.raises(TypeError):
        a.merge({"missing_image": 1})


def test_skip_stats_log(caplog):
    stats = SkipStats()
    with caplog.at_level(logging.INFO):
        stats.log(logging.getLogger("t"))
        stats.add("empty_text", 7)
        stats.log(logging.getLogger("t"), prefix="train: ")
    assert "no samples skipped" in caplog.text
    assert "train: skipped 1 samples: empty_text: 1 (e.g. 7)" in caplog.text


# ----------------------------------------------------------------------------------------------------------------------
# HF datasets
# ----------------------------------------------------------------------------------------------------------------------


def _hf_rows():
    image = Image.new("RGB", (6, 6), (200, 0, 0))
    return [
        {
            "id": "p0",
            "images": [image],
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "  What colour?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
                {"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]},
            ],
        },
        {
            "id": "p1",
            "images": [],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Hi there"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
            ],
        },
        {  # two image parts for one image: counted, not trained on
            "id": "p2",
            "images": [image],
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Q?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A."}]},
            ],
        },
    ]


def test_hf_dataset_normalisation_from_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "images": datasets.Sequence(datasets.Image()),
            "messages": [
                {
                    "role": datasets.Value("string"),
                    "content": [{"type": datasets.Value("string"), "text": datasets.Value("string")}],
                }
            ],
        }
    )
    rows = _hf_rows()
    for row in rows:  # Arrow stores the union of part fields: image parts get text=None
        for m in row["messages"]:
            m["content"] = [{"type": p["type"], "text": p.get("text")} for p in m["content"]]
    ds = datasets.Dataset.from_list(rows, features=features)
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(str(tmp_path / "dict"))

    stats = SkipStats()
    loaded = load_hf_dataset(tmp_path / "saved", stats=stats)
    assert len(loaded) == 2 and stats.as_dict()["counts"] == {"image_token_mismatch": 1}
    assert stats.as_dict()["examples"] == {"image_token_mismatch": ["p2"]}
    first = loaded[0]
    assert first["id"] == "p0" and first["index"] == 0
    assert first["messages"] == [
        {"role": "user", "content": "<image>\nWhat colour?"},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes."},
    ]
    assert len(first["images"]) == 1 and load_image(first["images"][0]).getpixel((0, 0)) == (200, 0, 0)
    assert loaded[1]["images"] == [] and loaded[1]["messages"][0]["content"] == "Hi there"
    assert loaded.modality_lengths == [3 + 1 + 1 + 1 + 128, -3]  # "<image>" counts as a word, as in LLaVA

    test_split = load_hf_dataset(tmp_path / "dict", split="test")
    assert len(test_split) == 1 and test_split[0]["id"] == "p1"
    with pytest.raises(ValueError, match="p2.*image_token_mismatch"):
        load_hf_dataset(tmp_path / "saved", strict=True)
    with pytest.raises(ValueError, match="split"):
        load_hf_dataset(tmp_path / "dict", split="validation")


def test_hf_dataset_string_content_and_local_files(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "jsonl_ds"
    folder.mkdir()
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Q?"},
                {"role": "assistant", "content": "A."},
            ]
        },
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "A."}]},
    ]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    stats = SkipStats()
    ds = load_hf_dataset(str(folder), stats=stats)  # `load_dataset` of a local folder (no Hub access)
    assert len(ds) == 1 and stats.as_dict()["counts"] == {"empty_text": 1}
    assert ds[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert ds[0]["images"] == [] and ds[0]["id"] == "jsonl_ds-0"


# ----------------------------------------------------------------------------------------------------------------------
# Mixtures
# ----------------------------------------------------------------------------------------------------------------------


def _toy(name: str, n: int, with_image: bool = True) -> ConversationDataset:
    records = [
        {
            "id": f"{name}{i}",
            "images": [f"/{name}/{i}.png"] if with_image else [],
            "messages": [
                {"role": "user", "content": ("<image>\n" if with_image else "") + "q " * (i + 1)},
                {"role": "assistant", "content": "a"},
            ],
        }
        for i in range(n)
    ]
    return ConversationDataset(records, name=name)


def test_mixture_counts_ids_and_without_replacement():
    a, b = _toy("a", 10), _toy("b", 4, with_image=False)
    mix = MixtureDataset({"A": a, "B": b}, weights=[1, 3], seed=0, num_samples=30)
    assert len(mix) == 30
    assert mix.source_counts() == {"A": 8, "B": 22}  # 7.5 / 22.5 -> largest remainder, sums to 30
    ids = [mix[i]["id"] for i in range(len(mix))]
    assert Counter(i.split("/")[0] for i in ids) == {"A": 8, "B": 22}
    # A is downsampled: 8 distinct records. B is upsampled 22 = 5 x 4 + 2: every record 5 or 6 times.
    assert len({i for i in ids if i.startswith("A/")}) == 8
    assert sorted(Counter(i for i in ids if i.startswith("B/")).values()) == [5, 5, 6, 6]
    assert [mix[i]["index"] for i in range(30)] == list(range(30))
    first_b = next(i for i in range(30) if ids[i].startswith("B/"))
    original = b[int(ids[first_b].split("/b")[1])]
    assert mix[first_b]["messages"] == original["messages"] and mix[first_b]["images"] == []
    assert mix.modality_lengths[first_b] == b.modality_lengths[int(ids[first_b].split("/b")[1])] < 0


def test_mixture_determinism_and_defaults():
    a, b = _toy("a", 10), _toy("b", 5)

    def ids(m):
        return [m[i]["id"] for i in range(len(m))]

    m1 = MixtureDataset([("A", a), ("B", b)], weights={"A": 1, "B": 1}, seed=3)
    m2 = MixtureDataset([("A", a), ("B", b)], weights={"A": 1, "B": 1}, seed=3)
    m3 = MixtureDataset([("A", a), ("B", b)], weights={"A": 1, "B": 1}, seed=4)
    assert ids(m1) == ids(m2) != ids(m3)
    assert len(m1) == 15 and m1.source_counts() == {"A": 8, "B": 7}
    concat = MixtureDataset({"A": a, "B": b}, seed=0)  # weights=None: proportional to sizes, every record once
    assert sorted(ids(concat)) == sorted([f"A/a{i}" for i in range(10)] + [f"B/b{i}" for i in range(5)])
    assert pickle.loads(pickle.dumps(m1))[3] == m1[3]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weights": [1.0]}, "one per source"),
        ({"weights": [1.0, -1.0]}, "non-negative"),
        ({"weights": {"A": 1.0}}, "source names"),
        ({"num_samples": -1}, "num_samples"),
    ],
)
def test_mixture_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixtureDataset({"A": _toy("a", 2), "B": _toy("b", 2)}, seed=0, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------------


def test_load_image_mode_conversions(tmp_path):
    # One rule for training and inference, LLaVA's `.convert("RGB")`: the colour under the alpha channel is kept.
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red: still red, not white
    rgba.putpixel((1, 1), (0, 0, 255, 255))
    assert load_image(_png(tmp_path / "rgba.png", mode="RGBA", color=(9, 8, 7, 0))).getpixel((0, 0)) == (9, 8, 7)
    converted = load_image(rgba)
    assert converted.mode == "RGB" and converted.getpixel((0, 0)) == (255, 0, 0)
    assert converted.getpixel((1, 1)) == (0, 0, 255)
    assert load_image(Image.new("RGBA", (2, 2), (0, 0, 0, 128))).getpixel((0, 0)) == (0, 0, 0)
    assert load_image(Image.new("LA", (2, 2), (77, 0))).getpixel((0, 0)) == (77, 77, 77)
    sixteen = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))  # 16-bit white, rescaled rather than clipped
    assert sixteen.mode.startswith("I") and load_image(sixteen).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.fromarray(np.full((2, 2), 257 * 40, dtype=np.uint16))).getpixel((0, 0)) == (40, 40, 40)
    assert load_image(_png(tmp_path / "l.png", mode="L", color=77)).getpixel((0, 0)) == (77, 77, 77)
    p = Image.new("P", (2, 2))
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.putpixel((0, 0), 1)
    p.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").getpixel((0, 0)) == (10, 200, 30)
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.save(tmp_path / "c.jpg", quality=100)
    r, g, b = load_image(str(tmp_path / "c.jpg")).getpixel((0, 0))
    assert r > 200 and g < 60 and b < 60
    assert load_image({"bytes": (tmp_path / "l.png").read_bytes(), "path": None}).mode == "RGB"


def test_load_image_errors_name_the_path(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="corrupt.png"):
        load_image(corrupt)
    truncated = tmp_path / "truncated.png"
    _png(truncated, size=(64, 64), color=(1, 2, 3))
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.png"):
        load_image(str(truncated))
    with pytest.raises(ValueError, match="missing.png.* not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(TypeError, match="path_or_image"):
        load_image(42)


def test_verify_images_flags_unreadable(tmp_path, image_folder):
    (image_folder / "bad.png").write_bytes(b"garbage")
    path = _write(tmp_path, [GOOD, GOOD | {"id": "bad", "image": "bad.png"}])
    stats = SkipStats()
    assert len(load_llava_json(path, image_folder, stats=stats)) == 2  # cheap checks only by default
    assert len(load_llava_json(path, image_folder, stats=stats, verify_images=True)) == 1
    assert stats.as_dict()["counts"] == {"unreadable_image": 1}


# ----------------------------------------------------------------------------------------------------------------------
# Length-grouped sampling
# ----------------------------------------------------------------------------------------------------------------------


def _mixed_lengths(n_mm=37, n_text=23, seed=0):
    rng = random.Random(seed)
    lengths = [rng.randint(130, 400) for _ in range(n_mm)] + [-rng.randint(1, 300) for _ in range(n_text)]
    rng.shuffle(lengths)
    return lengths


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_modality_grouping(world_size):
    lengths = _mixed_lengths()
    batch_size = 4
    sampler = ModalityLengthGroupedSampler(lengths, batch_size=batch_size, world_size=world_size, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))
    mega = world_size * batch_size
    n_mm, n_text = sum(x > 0 for x in lengths), sum(x < 0 for x in lengths)
    full = n_mm // mega + n_text // mega
    megabatches = [order[i : i + mega] for i in range(0, len(order), mega)]
    for m in megabatches[:full]:  # every full megabatch holds a single modality
        assert len({lengths[i] > 0 for i in m}) == 1
        # Each rank's chunk is length-homogeneous: the megabatch was sorted by length before the split.
        chunks = [m[r * batch_size : (r + 1) * batch_size] for r in range(world_size)]
        assert all(len(c) == batch_size for c in chunks)
    leftovers = order[full * mega :]
    assert len(leftovers) == n_mm % mega + n_text % mega


def test_length_sorting_within_megabatch_single_rank():
    lengths = [random.Random(1).randint(130, 900) for _ in range(64)]
    order = ModalityLengthGroupedSampler(lengths, batch_size=8, seed=5).indices()
    for start in range(0, 64, 8):
        chunk = [lengths[i] for i in order[start : start + 8]]
        assert chunk == sorted(chunk, reverse=True)


def test_sampler_deterministic_per_seed_and_epoch():
    lengths = _mixed_lengths()
    s1 = ModalityLengthGroupedSampler(lengths, batch_size=4, world_size=2, seed=11)
    s2 = ModalityLengthGroupedSampler(lengths, batch_size=4, world_size=2, seed=11)
    # Global RNG state must not matter (the reference used it for the per-modality shuffles).
    torch.manual_seed(0)
    e0 = list(s1)
    torch.manual_seed(123)
    assert list(s2) == e0
    s1.set_epoch(1)
    s2.set_epoch(1)
    assert list(s1) == list(s2) != e0
    assert s1.indices(epoch=0) == e0
    assert list(ModalityLengthGroupedSampler(lengths, batch_size=4, world_size=2, seed=12)) != e0


def test_sampler_with_dataset_lengths_and_validation(tmp_path, image_folder):
    ds = load_llava_json(
        _write(tmp_path, [GOOD, {"id": "t", "conversations": _conv("Hi", "Hello")}]), image_folder, strict=True
    )
    order = list(ModalityLengthGroupedSampler(ds.modality_lengths, batch_size=1))
    assert sorted(order) == [0, 1]
    with pytest.raises(ValueError, match="contains 0"):
        get_modality_length_grouped_indices([3, 0, -2], 1, 1, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="batch_size"):
        ModalityLengthGroupedSampler([1], batch_size=0)


def test_training_and_inference_decode_images_with_one_function(tmp_path):
    """`recipes.data.load_image` (training) and the processor's `load_image_rgb` (inference) give the same pixels for
    every transparency kind: alpha dropped, as LLaVA's `.convert("RGB")`."""
    from processing.processing_sqllava import load_image_rgb

    rng = np.random.default_rng(0)
    images = {
        "rgba": Image.fromarray(rng.integers(0, 256, (9, 7, 4), dtype=np.uint8), "RGBA"),
        "la": Image.fromarray(rng.integers(0, 256, (9, 7, 2), dtype=np.uint8), "LA"),
        "p": Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).quantize(8),
    }
    images["p"].info["transparency"] = 0
    for name, image in images.items():
        path = tmp_path / f"{name}.png"
        image.save(path)
        training = np.asarray(load_image(path))
        assert np.array_equal(training, np.asarray(load_image_rgb(str(path)))), name
        assert np.array_equal(training, np.asarray(Image.open(path).convert("RGB"))), name


def test_image_limits_are_checked_before_decoding(tmp_path, image_folder):
    from processing.processing_sqllava import ImageLimitError

    wide = tmp_path / "wide.png"
    Image.new("RGB", (4000, 4), (1, 2, 3)).save(wide)
    with pytest.raises(ImageLimitError, match=r"wide.png.*4000x4.*aspect ratio of 1000:1"):
        load_image(wide)
    with pytest.raises(ImageLimitError, match=r"16,000 pixels, over the limit of 100"):
        load_image(wide, max_pixels=100, max_aspect_ratio=None)
    assert load_image(wide, max_aspect_ratio=None).size == (4000, 4)
    # With verify_images the loader refuses it too, under its own reason.
    Image.new("RGB", (4000, 4)).save(image_folder / "banner.png")
    path = _write(tmp_path, [GOOD, GOOD | {"id": "banner", "image": "banner.png"}])
    stats = SkipStats()
    assert len(load_llava_json(path, image_folder, stats=stats, verify_images=True)) == 1
    assert stats.as_dict()["counts"] == {"image_size_limit": 1}


def test_image_paths_are_confined_to_the_image_folder(tmp_path, image_folder):
    outside = _png(tmp_path / "secret.png")
    records = [
        GOOD,
        GOOD | {"id": "dotdot", "image": "../secret.png"},
        GOOD | {"id": "absolute", "image": outside},
        GOOD | {"id": "inside_absolute", "image": str(image_folder / "b.png")},
        GOOD | {"id": "normalised", "image": "./a.png"},
    ]
    path = _write(tmp_path, records)
    stats = SkipStats()
    ds = load_llava_json(path, image_folder, stats=stats)
    assert [ds[i]["id"] for i in range(len(ds))] == ["good", "inside_absolute", "normalised"]
    assert stats.as_dict()["counts"] == {"image_outside_folder": 2}
    assert stats.as_dict()["examples"] == {"image_outside_folder": ["dotdot", "absolute"]}
    with pytest.raises(BadRecordError, match=r"dotdot.*image_outside_folder.*'\.\./secret.png' leaves the image"):
        load_llava_json(path, image_folder, strict=True)
    allowed = load_llava_json(path, image_folder, allow_outside_image_folder=True)
    assert len(allowed) == 5 and allowed[2]["images"] == [outside]


@pytest.mark.parametrize(
    "content, name, match",
    [
        ("", "empty.json", r"empty.json' is empty \(0 bytes\)"),
        ("  \n\n", "blank.jsonl", r"blank.jsonl' is empty"),
        ("  \n", "blank.json", r"blank.json' is empty \(3 bytes\)"),
        ("\n \n\n", "lines_blank.jsonl", r"lines_blank.jsonl' is empty \(4 bytes\)"),
        ("[]", "nothing.json", r"nothing.json' holds an empty list"),
        (json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n", "lines.json", r"lines.json' holds JSON Lines.*\.jsonl"),
        ('[{"id": "a",', "cut.json", r"cut.json' is not valid JSON: .* line 1, column"),
    ],
)
def test_unreadable_data_files_name_the_file(tmp_path, image_folder, content, name, match):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_llava_json(path, image_folder)


@pytest.mark.parametrize(
    "conversations, detail",
    [
        ([{"from": "human", "value": 42}, {"from": "gpt", "value": "A."}], r"turn 0 text .* is an int \(42\)"),
        ([{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": None}], r"turn 1 text .* a NoneType"),
        ([{"from": 1, "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}], r"turn 0 'from' is an int \(1\)"),
        ([{"from": "human"}, {"from": "gpt", "value": "A."}], r"turn 0 has no 'value' / 'content' field"),
        ("<image>\nQ? A.", r"conversation is a str \('<image>\\nQ\? A\.'\), not a list of turns"),
    ],
)
def test_non_string_fields_are_skipped_with_the_field_named(tmp_path, image_folder, conversations, detail):
    path = _write(tmp_path, [GOOD, {"id": "typed", "image": "a.png", "conversations": conversations}])
    stats = SkipStats()
    assert len(load_llava_json(path, image_folder, stats=stats)) == 1
    assert stats.as_dict()["counts"] == {"malformed_record": 1}
    assert re.search(detail, stats.details["malformed_record"])
    # Strict mode names the file, the record and its position, and tells a command-line user the flag.
    with pytest.raises(BadRecordError, match=r"id='typed' \(position 1 in .*data.json\): malformed_record") as info:
        load_llava_json(path, image_folder, strict=True)
    assert re.search(detail, str(info.value)) and "--strict_data false" in str(info.value)
