"""A tiny Llama-style tokenizer trained offline, for tests, benchmarks and the embedded tiny default.

Not shipped to the Hub. It mimics the layout of the Llama/Vicuna SentencePiece vocabulary so that code written
for the real tokenizer runs unchanged on it: `<unk>`=0, `<s>`=1, `</s>`=2, the 256 byte-fallback pieces
`<0x00>`..`<0xFF>` at ids 3..258 (so any text encodes, nothing maps to `<unk>`), then `▁`-prefixed BPE pieces learnt
from a small built-in corpus, then the added special tokens `<image>` and `<pad>` (ids `vocab_size` and
`vocab_size + 1`, like 32000/32001 on Vicuna). Its normalizer is the legacy SentencePiece one (prepend `▁` to every
text segment, spaces become `▁`), exactly what `SQLlavaProcessor` tokenizes with.
"""

from __future__ import annotations

import itertools

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import LlamaTokenizerFast


_COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "gray", "grey", "pink", "brown"]
_SHAPES = ["circle", "square", "triangle", "rectangle", "star", "ellipse", "diamond", "shape", "shapes", "object"]
_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "no", "none"]
_POSITIONS = [
    "left", "right", "top", "bottom", "center", "centre", "middle", "upper", "lower", "corner", "above", "below",
    "next", "near", "between", "side", "background", "foreground",
]  # fmt: skip
_WORDS = (
    "the a an is are there what which where how many much of in on at to and or with this that it its image picture "
    "photo shows show contains contain color colour colors size small large big tiny larger smaller biggest "
    "smallest count number describe description briefly detail detailed question answer yes no not only each "
    "both all some any most more than same different other another located position located placed appears "
    "see can you do does I we they he she one's has have has been be was were will would could should may might "
    "please tell me about give why because also again relevant content objects events happening discuss asking "
    "for example knowledge complex curious virtual user assistant artificial intelligence chat between helpful "
    "polite answers questions detailed uncertain details gives asks A An The There What Which Where How Is Are "
    "Yes No Describe Count Please Also Again USER ASSISTANT VUSER SYSTEM"
)
_PROMPTS = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions.",
    "Also, the artificial intelligence assistant is a curious virtual user. The virtual user asks complex questions "
    "that are relevant to the content in the image, for example, asking about background knowledge of the objects "
    "in the image, asking to discuss about events happening in the image, etc. Again, do not ask about uncertain "
    "details.",
]


def _corpus() -> list[str]:
    lines = list(_PROMPTS) + [_WORDS]
    for colour, shape in itertools.product(_COLOURS, _SHAPES):
        lines.append(f"USER: What colour is the {shape}? ASSISTANT: The {shape} is {colour}.")
        lines.append(f"VUSER: Is there a {colour} {shape} in the image? ASSISTANT: Yes, there is a {colour} {shape}.")
    for number, shape, position in itertools.product(_NUMBERS, _SHAPES, _POSITIONS):
        lines.append(f"There are {number} {shape}s at the {position}. How many {shape}s are on the {position}?")
    return lines


def build_tiny_tokenizer(vocab_size: int = 700, extra_corpus: list[str] | None = None) -> LlamaTokenizerFast:
    """
    Train (offline, deterministically) a small Llama-style BPE tokenizer with `<image>` and `<pad>` added.

    Args:
        vocab_size (`int`, *optional*, defaults to 700):
            Size of the base vocabulary including the 3 special and 256 byte pieces (the added `<image>` and
            `<pad>` come on top). Must be larger than 300.
        extra_corpus (`list[str]`, *optional*):
            More training sentences (e.g. the synthetic dataset's vocabulary), so its words get whole pieces.

    Returns:
        `LlamaTokenizerFast`: the tokenizer; `<image>` has id `vocab_size`, `<pad>` id `vocab_size + 1`.

    Example:

    ```python
    >>> tok = build_tiny_tokenizer()
    >>> tok.convert_tokens_to_ids(["<unk>", "<s>", "</s>", "<image>", "<pad>"])
    [0, 1, 2, 700, 701]
    ```
    """
    if vocab_size <= 300:
        raise ValueError(f"`vocab_size` must be > 300 (3 special + 256 byte pieces + merges), got {vocab_size}.")
    specials = ["<unk>", "<s>", "</s>"]
    byte_pieces = [f"<0x{i:02X}>" for i in range(256)]

    # Train the merges on `▁`-split words, like SentencePiece (which never merges across a word start).
    trainer_tok = Tokenizer(BPE())
    trainer_tok.normalizer = normalizers.Replace(" ", "▁")
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    alphabet = [chr(c) for c in range(32, 127) if chr(c) != " "] + ["▁"]
    trainer = BpeTrainer(
        vocab_size=vocab_size - len(specials) - len(byte_pieces),
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
        special_tokens=[],
    )
    trainer_tok.train_from_iterator(_corpus() + list(extra_corpus or []), trainer=trainer)
    trained = trainer_tok.get_vocab()
    pieces = sorted(trained, key=lambda piece: trained[piece])
    vocab = {piece: i for i, piece in enumerate(specials + byte_pieces)}
    for piece in pieces:
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in _merges(trainer_tok)]

    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    # The legacy Llama (SentencePiece `add_dummy_prefix`) normalizer: every text segment gets a leading `▁`.
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tokenizer = LlamaTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        add_bos_token=True,
        add_eos_token=False,
        legacy=True,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    # Imported here, not at module top: processing_sqllava is shipped flat and must not depend on this file.
    from .processing_sqllava import add_sqllava_special_tokens

    add_sqllava_special_tokens(tokenizer)
    return tokenizer


def _merges(trainer_tok: Tokenizer) -> list:
    import json

    return json.loads(trainer_tok.to_str())["model"]["merges"]
