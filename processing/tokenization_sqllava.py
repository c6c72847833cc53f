"""Tokenizer for SQ-LLaVA: the slow Llama SentencePiece tokenizer of transformers 4.31, which LLaVA and SQ-LLaVA were
trained with, for the checkpoint's own `legacy` flag.

This file is shipped to the Hub next to the model files and registered in `tokenizer_config.json`'s `auto_map`, so
`AutoTokenizer.from_pretrained(folder, trust_remote_code=True)` (vLLM, lmms-eval, any engine) gives the ids the
model was trained with, and `SQLlavaProcessor` tokenizes with it too. It imports only the standard library and
transformers at top level (`tokenizers`, a dependency of transformers, inside functions).

What 4.31 did (`LlamaTokenizer` with `use_fast=False`, as LLaVA's `tokenizer_image_token` called it)
------------------------------------------------------------------------------------------------------
The text is split at the added tokens (`<s>`, `</s>`, `<unk>`, `<image>`, `<pad>` ...; no space around them is
stripped, since their `lstrip`/`rstrip` are off) and every text segment between them is encoded with SentencePiece,
whose `add_dummy_prefix` gives each segment a leading `▁`. Then:

- `legacy=True` (and a missing flag, 4.31's default): the segments are kept as SentencePiece encodes them. After
  `</s>`, `"VUSER"` is `▁V USER` (478, 11889) and `" ASSISTANT"` is `▁ ▁A SS IST ANT`.
- `legacy=False` (the ShareGPT4V base and Vicuna-v1.5 set it): the leading `▁` of the first piece of every segment
  that follows an added token is removed, unless the segment starts with a space: after `</s>`, `"VUSER"` is
  `V USER` (29963, 11889) and `"USER"` is `US ER` (3308, 1001). The piece without its `▁` is looked up as a string,
  so a piece that does not exist without `▁` becomes `<unk>`, exactly as 4.31 did; a lone `▁` piece is dropped. The
  first segment of the text keeps its `▁`.

Two boundaries are starts of a text rather than "after a special token", because that is how the training ids were
made: the text after `<image>` (LLaVA split the prompt at `<image>` and tokenized every chunk on its own, so each
chunk starts like a text: `"<image>\\nWhat"` gives `▁ <0x0A> What` under both settings) and the text after a `<s>`
that opens the text (chat templates emit the BOS, as transformers' templates do; LLaVA's BOS came from
`add_special_tokens`, with the text after it tokenized as a text start). A `<s>` that opens the text is also the one
BOS: `add_special_tokens=True` does not add a second one.

SentencePiece's BPE is run through the `tokenizers` BPE model stored in `tokenizer.json` with the SentencePiece
normalizer (prepend `▁`, spaces to `▁`): tests check the ids against the `sentencepiece` package itself on the
Llama-2 vocabulary, for both settings. A `tokenizer.json` alone cannot express the `legacy=False` rule (fast
tokenizers' Metaspace pre-tokenizer gives `USER` (11889) after `</s>`), which is why this class exists.
"""

from __future__ import annotations

import copy
import json
import os
import re
from typing import Any, ClassVar

from transformers import PreTrainedTokenizer
from transformers.tokenization_utils_base import AddedToken
from transformers.utils import logging

logger = logging.get_logger(__name__)

SPIECE_UNDERLINE = "▁"
VOCAB_FILES_NAMES = {"tokenizer_file": "tokenizer.json"}
IMAGE_TOKEN = "<image>"
# The role tags a reply starts after (the generation prompt's last tag); the processor decodes replies with it too.
REPLY_TAG_PATTERN = r"(?:ASSISTANT|VUSER):"
# The reply format of the chat template as a transformers (5.x) response template: a reply starts after the prompt's
# last `ASSISTANT:` or `VUSER:` and ends at `</s>`. transformers 5's chat pipelines parse replies with it
# (`parse_response`); without one they file every reply under "assistant", also a question asked after `VUSER:`.
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor_pattern": REPLY_TAG_PATTERN,
    "fields": {"content": {"close_pattern": r"</s>", "content": "text"}},
}
_REPLY_TAG = re.compile(REPLY_TAG_PATTERN)


def sentencepiece_backend(spec: dict) -> Any:
    """
    A `tokenizers.Tokenizer` that runs the BPE model of a `tokenizer.json` spec like SentencePiece with
    `add_dummy_prefix` on ONE text segment: `▁` prepended, spaces turned into `▁`, no pre-tokenizer, no added
    tokens (the caller splits at them), no post-processor. Specs whose model is not a `▁`-marked (SentencePiece-style)
    BPE keep their own normalizer and pre-tokenizer.

    Args:
        spec (`dict`): a parsed `tokenizer.json` (`tokenizers.Tokenizer.to_str()`).
    """
    from tokenizers import Tokenizer

    spec = dict(spec)  # only top-level keys are replaced below; nested values are read, never mutated
    model = spec.get("model") or {}
    sentencepiece_style = model.get("type") == "BPE" and SPIECE_UNDERLINE in json.dumps(
        [spec.get("normalizer"), spec.get("pre_tokenizer"), spec.get("decoder")], ensure_ascii=False
    )
    if sentencepiece_style:
        spec["normalizer"] = {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": SPIECE_UNDERLINE},
                {"type": "Replace", "pattern": {"String": " "}, "content": SPIECE_UNDERLINE},
            ],
        }
        spec["pre_tokenizer"] = None
    spec["added_tokens"] = []
    spec["post_processor"] = None
    spec["truncation"] = None
    spec["padding"] = None
    return Tokenizer.from_str(json.dumps(spec))


class SQLlavaTokenizer(PreTrainedTokenizer):
    r"""
    Llama/Vicuna SentencePiece tokenizer reproducing transformers 4.31's slow `LlamaTokenizer` (see the module
    docstring), with `legacy` read from the checkpoint. Backed by the BPE model of `tokenizer.json`.

    Args:
        tokenizer_file (`str`, *optional*):
            Path to a `tokenizer.json` holding the SentencePiece BPE model (what a fast Llama tokenizer saves).
        legacy (`bool`, *optional*):
            4.31's `legacy` flag; `None` (a checkpoint without it) means `True`, 4.31's default.
        add_bos_token (`bool`, *optional*, defaults to `True`): start sequences with `<s>`.
        add_eos_token (`bool`, *optional*, defaults to `False`): end sequences with `</s>`.
        image_token (`str`, *optional*, defaults to `"<image>"`):
            The image placeholder; the text after it is tokenized as the start of a text (LLaVA's chunks).
        tokenizer_object (`tokenizers.Tokenizer`, *optional*): the backend, instead of `tokenizer_file`.
        kwargs: special tokens (`unk_token`, `bos_token`, `eos_token`, `pad_token`) and the other arguments of
            [`PreTrainedTokenizer`].

    Example:

    ```python
    >>> from transformers import AutoTokenizer
    >>> tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)  # an SQ-LLaVA folder, legacy=False
    >>> tokenizer("A cat.</s>VUSER:", add_special_tokens=False).input_ids
    [319, 6635, 29889, 2, 29963, 11889, 29901]
    ```
    """

    vocab_files_names: ClassVar[dict[str, str]] = VOCAB_FILES_NAMES
    model_input_names: ClassVar[list[str]] = ["input_ids", "attention_mask"]

    def __init__(
        self,
        tokenizer_file: str | None = None,
        unk_token: str | AddedToken = "<unk>",
        bos_token: str | AddedToken = "<s>",
        eos_token: str | AddedToken = "</s>",
        pad_token: str | AddedToken | None = None,
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        legacy: bool | None = None,
        image_token: str = IMAGE_TOKEN,
        clean_up_tokenization_spaces: bool = False,
        **kwargs,
    ):
        tokenizer_object = kwargs.pop("tokenizer_object", None)
        if tokenizer_object is not None:
            spec = json.loads(tokenizer_object.to_str())
        elif tokenizer_file is not None:
            with open(tokenizer_file, encoding="utf-8") as handle:
                spec = json.load(handle)
        else:
            raise ValueError(
                "SQLlavaTokenizer needs `tokenizer_file` (a tokenizer.json with the SentencePiece BPE model) or "
                "`tokenizer_object`; to convert a loaded Llama tokenizer use `SQLlavaTokenizer.from_tokenizer(tok)`."
            )
        if legacy is not None and not isinstance(legacy, bool):
            raise TypeError(f"`legacy` must be True, False or None (None means True), got {legacy!r}.")
        # Kept as loaded (plus the current added tokens on save) so fast-tokenizer clients can still read the file.
        self._spec = {key: value for key, value in spec.items() if key != "added_tokens"}
        self._backend = sentencepiece_backend(spec)
        self._vocab: dict[str, int] = self._backend.get_vocab(with_added_tokens=False)
        self._id_to_piece = {index: piece for piece, index in self._vocab.items()}
        self.legacy = True if legacy is None else legacy
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.image_token = image_token
        self._split_cache: tuple[tuple, Any] | None = None
        kwargs.setdefault("added_tokens_decoder", _added_tokens_of(spec))
        response_template = kwargs.pop("response_template", None) or RESPONSE_TEMPLATE
        super().__init__(
            unk_token=_special(unk_token),
            bos_token=_special(bos_token),
            eos_token=_special(eos_token),
            pad_token=_special(pad_token),
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            legacy=self.legacy,  # saved explicitly, so the folder says which rule it follows
            image_token=image_token,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            response_template=response_template,
            **kwargs,
        )
        self.response_template = response_template  # 4.57's tokenizer base keeps no such attribute

    @classmethod
    def from_tokenizer(cls, tokenizer, legacy: bool | None = None, **kwargs) -> SQLlavaTokenizer:
        """
        Convert a loaded fast Llama/Vicuna tokenizer (same vocabulary, added tokens, special tokens and padding
        side), keeping its `legacy` flag unless `legacy` is given.

        Args:
            tokenizer (`PreTrainedTokenizerFast`): the tokenizer to convert (not modified).
            legacy (`bool`, *optional*): overrides the flag read from `tokenizer` (its `tokenizer_config.json`).
            kwargs: more arguments for [`SQLlavaTokenizer`].
        """
        if is_sqllava_tokenizer(tokenizer):
            converted = copy.deepcopy(tokenizer)
            if legacy is not None:
                converted.legacy = legacy
                converted.init_kwargs["legacy"] = legacy
            return converted
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(
                f"SQLlavaTokenizer.from_tokenizer needs a fast (`tokenizers`-backed) tokenizer, got "
                f"{type(tokenizer).__name__}. Load it with `AutoTokenizer.from_pretrained(..., use_fast=True)`."
            )
        if legacy is None:
            legacy = legacy_flag(tokenizer)
        init = getattr(tokenizer, "init_kwargs", {}) or {}
        special = {
            name: getattr(tokenizer, name)
            for name in ("unk_token", "bos_token", "eos_token", "pad_token")
            if getattr(tokenizer, name, None) is not None
        }
        arguments = dict(
            tokenizer_object=backend,
            legacy=legacy,
            added_tokens_decoder=copy.deepcopy(dict(tokenizer.added_tokens_decoder)),
            add_bos_token=bool(getattr(tokenizer, "add_bos_token", init.get("add_bos_token", True))),
            add_eos_token=bool(getattr(tokenizer, "add_eos_token", init.get("add_eos_token", False))),
            padding_side=tokenizer.padding_side,
            model_max_length=tokenizer.model_max_length,
            name_or_path=tokenizer.name_or_path,
            **special,
        )
        if getattr(tokenizer, "chat_template", None):
            arguments["chat_template"] = tokenizer.chat_template
        arguments.update(kwargs)
        return cls(**arguments)

    # ------------------------------------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def get_vocab(self) -> dict[str, int]:
        vocab = dict(self._vocab)
        vocab.update(self._added_tokens_encoder)
        return vocab

    def _convert_token_to_id(self, token: str) -> int:
        # SentencePiece's `piece_to_id`: an unknown piece is <unk>.
        index = self._vocab.get(token)
        if index is None:
            index = self._vocab.get(str(self.unk_token), 0)
        return index

    def _convert_id_to_token(self, index: int) -> str:
        # An id past the vocabulary (the model's embedding rows are padded, e.g. to 32064) decodes to nothing, as
        # fast tokenizers decode it: a model that samples one must not crash the decoding of its output.
        return self._id_to_piece.get(index, "")

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        if skip_special_tokens and not isinstance(ids, int):
            # Every added token marked special (`<image>`, `<pad>` ...), as fast tokenizers skip; transformers 4.x's
            # slow tokenizers skip only the named ones (bos/eos/unk/pad/additional_special_tokens).
            special = set(self.all_special_ids)
            special.update(index for index, token in self._added_tokens_decoder.items() if token.special)
            ids = [index for index in ids if int(index) not in special]
        # Already filtered (a superset of what super() would skip; an int is never skipped), so no second pass.
        return super().convert_ids_to_tokens(ids, skip_special_tokens=False)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        # The SentencePiece decoder of the fast Llama tokenizer (`▁` -> space, byte pieces fused, first space
        # dropped), applied to the whole list with added tokens inline, as fast tokenizers decode.
        return self._backend.decoder.decode(list(tokens)) if self._backend.decoder else "".join(tokens)

    def _decode(
        self,
        token_ids: int | list[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs,
    ) -> str:
        # Same on transformers 4.x and 5.x (4.x's slow `_decode` joins added-token runs with spaces).
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        tokens = self.convert_ids_to_tokens(list(token_ids), skip_special_tokens=skip_special_tokens)
        text = self.convert_tokens_to_string(tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return self.clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    # ------------------------------------------------------------------------------------------------ tokenizing
    def _split_pattern(self):
        """`(regex matching every added token (longest first), the added tokens that strip spaces next to them)`,
        rebuilt when tokens were added."""
        key = (len(self._added_tokens_encoder), tuple(self._added_tokens_encoder))
        if self._split_cache is None or self._split_cache[0] != key:
            tokens = sorted(self._added_tokens_encoder, key=len, reverse=True)
            pattern = re.compile("|".join(re.escape(token) for token in tokens)) if tokens else None
            stripping = {
                token.content: token
                for token in self._added_tokens_decoder.values()
                if isinstance(token, AddedToken) and (token.lstrip or token.rstrip)
            }
            self._split_cache = (key, (pattern, stripping))
        return self._split_cache[1]

    def _segments(self, text: str, split_special_tokens: bool = False) -> list[tuple[int, int, str | None]]:
        """`(start, end, added_token_or_None)` pieces of `text`; spaces next to an added token whose
        `lstrip`/`rstrip` is set are dropped from the neighbouring text, as transformers does."""
        pattern, stripping = self._split_pattern()
        if split_special_tokens:
            pattern = None
        pieces: list[list] = []
        position = 0
        if pattern is not None:
            for match in pattern.finditer(text):
                start, end = match.span()
                if start > position:
                    pieces.append([position, start, None])
                pieces.append([start, end, match.group()])
                position = end
        if position < len(text):
            pieces.append([position, len(text), None])
        for i, (start, end, token) in enumerate(pieces):
            added = stripping.get(token) if token is not None and stripping else None
            if added is None:
                continue
            if added.rstrip and i + 1 < len(pieces) and pieces[i + 1][2] is None:
                following = pieces[i + 1]
                following[0] = end + (len(text[end : following[1]]) - len(text[end : following[1]].lstrip()))
            if added.lstrip and i > 0 and pieces[i - 1][2] is None:
                previous = pieces[i - 1]
                previous[1] = previous[0] + len(text[previous[0] : start].rstrip())
        return [(start, end, token) for start, end, token in pieces if end > start]

    def _encode_text(self, text: str, split_special_tokens: bool = False, with_pieces: bool = True):
        """Ids, pieces (when `with_pieces`) and character offsets of `text` (no BOS/EOS added): the 4.31 rule of the
        module docstring. Returns `(ids, pieces, offsets)`."""
        ids: list[int] = []
        pieces: list[str] = []
        offsets: list[tuple[int, int]] = []
        segments = self._segments(text, split_special_tokens)
        encoder = self._added_tokens_encoder
        opens_with_bos = bool(segments) and segments[0][2] is not None and segments[0][2] == str(self.bos_token)
        strip_rule = not self.legacy
        previous: str | None = None  # the added token before the current text segment; None at a text start
        for index, (start, end, token) in enumerate(segments):
            if token is not None:
                ids.append(encoder[token])
                pieces.append(token)
                offsets.append((start, end))
                # The text after `<image>` or after an opening BOS starts like a text (module docstring).
                previous = None if token == self.image_token or (index == 0 and opens_with_bos) else token
                continue
            segment = text[start:end]
            encoding = self._backend.encode(segment, add_special_tokens=False)
            segment_ids = encoding.ids
            segment_offsets = [(start + a, start + b) for a, b in encoding.offsets]
            segment_pieces = encoding.tokens if with_pieces or strip_rule else []
            if (
                strip_rule
                and previous is not None
                and segment_ids
                and segment_pieces[0].startswith(SPIECE_UNDERLINE)
                and not segment.startswith((" ", SPIECE_UNDERLINE))
            ):
                stripped = segment_pieces[0][1:]
                if stripped:
                    segment_pieces[0] = stripped
                    segment_ids[0] = self._convert_token_to_id(stripped)
                else:
                    del segment_pieces[0], segment_ids[0], segment_offsets[0]
            ids.extend(segment_ids)
            if with_pieces:
                pieces.extend(segment_pieces)
            offsets.extend(segment_offsets)
            previous = None
        return ids, pieces, offsets

    def tokenize(self, text: str, **kwargs) -> list[str]:
        """The pieces of `text` by the 4.31 rule (module docstring); added tokens are kept whole."""
        split_special_tokens = kwargs.pop("split_special_tokens", getattr(self, "split_special_tokens", False))
        text, kwargs = self.prepare_for_tokenization(text, **kwargs)
        return self._encode_text(text, split_special_tokens)[1]

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return self._encode_text(text, split_special_tokens=True)[1]

    def encode_with_offsets(
        self, text: str, add_special_tokens: bool = True
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """
        Ids and character offsets of one text, fast: what `tokenizer(text)` gives, plus `(start, end)` per token
        (the BOS this adds has `(0, 0)`). Used by `SQLlavaProcessor`.

        Args:
            text (`str`): the text.
            add_special_tokens (`bool`, *optional*, defaults to `True`): add the BOS (and EOS if `add_eos_token`);
                a text that opens with `<s>` already has its BOS.
        """
        ids, _, offsets = self._encode_text(text, with_pieces=False)
        if add_special_tokens:
            prefix, suffix = self._affixes(ids, True)
            ids = prefix + ids + suffix
            offsets = [(0, 0)] * len(prefix) + offsets + [(len(text), len(text))] * len(suffix)
        return ids, offsets

    def _affixes(self, ids: list[int], first: bool) -> tuple[list[int], list[int]]:
        """The special tokens put before and after one sequence: `<s>` (not before a first sequence that already
        starts with it) and `</s>` with `add_eos_token`."""
        prefix = [self.bos_token_id] if self.add_bos_token and self.bos_token_id is not None else []
        if prefix and first and list(ids[:1]) == prefix:
            prefix = []
        suffix = [self.eos_token_id] if self.add_eos_token and self.eos_token_id is not None else []
        return prefix, suffix

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """`<s> A` (and `</s>` with `add_eos_token`), Llama's `<s> A <s> B` for pairs; a sequence that already starts
        with `<s>` (a chat template's) gets no second one."""
        output = []
        for ids, first in ((token_ids_0, True), (token_ids_1, False)):
            if ids is not None:
                prefix, suffix = self._affixes(ids, first)
                output += prefix + list(ids) + suffix
        return output

    def get_special_tokens_mask(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None, already_has_special_tokens: bool = False
    ) -> list[int]:
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        mask = []
        for ids, first in ((token_ids_0, True), (token_ids_1, False)):
            if ids is not None:
                prefix, suffix = self._affixes(ids, first)
                mask += [1] * len(prefix) + [0] * len(ids) + [1] * len(suffix)
        return mask

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        types = []
        for ids, first, kind in ((token_ids_0, True, 0), (token_ids_1, False, 1)):
            if ids is not None:
                prefix, suffix = self._affixes(ids, first)
                types += [kind] * (len(prefix) + len(ids) + len(suffix))
        return types

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        prefix, suffix = self._affixes([], False)
        return (len(prefix) + len(suffix)) * (2 if pair else 1)

    # ---------------------------------------------------------------------------------------------------- saving
    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        """Write `tokenizer.json`: the BPE model as loaded, with the current added tokens (a fast-tokenizer file)."""
        if not os.path.isdir(save_directory):
            raise ValueError(f"save_directory={save_directory!r} is not a folder.")
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + "tokenizer.json")
        spec = dict(self._spec)
        spec["added_tokens"] = [
            {
                "id": index,
                "content": token.content,
                "single_word": token.single_word,
                "lstrip": token.lstrip,
                "rstrip": token.rstrip,
                "normalized": token.normalized,
                "special": token.special,
            }
            for index, token in sorted(self._added_tokens_decoder.items())
        ]
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(spec, handle, ensure_ascii=False, indent=2)
        return (path,)

    def parse_response(self, response, schema=None, *, prefix=None, tools=None):
        """transformers 5's `parse_response` (with `RESPONSE_TEMPLATE`), the role of each reply read from its prompt:
        `"vuser"` when the prompt's last role tag is `VUSER:` (the model asked a question about the image),
        `"assistant"` otherwise; the content without the space the model writes after the tag.

        Args:
            response, schema, prefix, tools: as `PreTrainedTokenizerBase.parse_response`; `prefix` (the prompt) is
                required there too.
        """
        parsed = super().parse_response(response, schema, prefix=prefix, tools=tools)
        if isinstance(prefix, str):
            prompts = [prefix]
        elif isinstance(prefix, (list, tuple)) and (not prefix or isinstance(prefix[0], str)):
            prompts = list(prefix) or [""]
        else:
            decoded = self.decode(prefix)
            prompts = [decoded] if isinstance(decoded, str) else decoded
        messages = parsed if isinstance(parsed, list) else [parsed]
        if len(prompts) == 1:
            prompts = prompts * len(messages)
        for message, prompt in zip(messages, prompts):
            tags = _REPLY_TAG.findall(prompt)
            message["role"] = "vuser" if tags and tags[-1] == "VUSER:" else "assistant"
            if isinstance(message.get("content"), str):
                message["content"] = message["content"].strip()
        return parsed

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_backend"] = None
        state["_split_cache"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._backend = sentencepiece_backend(self._spec)


def is_sqllava_tokenizer(tokenizer) -> bool:
    """Whether `tokenizer` is an `SQLlavaTokenizer`: this module's class, the same class loaded as a folder's remote
    code, or a subclass of either (vLLM wraps tokenizers in a subclass that caches attributes)."""
    return any(klass.__name__ == SQLlavaTokenizer.__name__ for klass in type(tokenizer).__mro__)


def legacy_flag(tokenizer) -> bool:
    """
    The `legacy` flag of the checkpoint a tokenizer was loaded from, `True` when the checkpoint has none (the default
    of transformers 4.31, which LLaVA used).

    Read from the tokenizer's own init arguments when it recorded the flag (transformers 4.x, this class), else from
    the `tokenizer_config.json` it was loaded from: transformers 5.x's Llama tokenizers neither record the flag nor
    keep a missing one missing (their attribute defaults to `False`).

    Args:
        tokenizer (`PreTrainedTokenizerBase`): any loaded tokenizer.
    """
    value = (getattr(tokenizer, "init_kwargs", None) or {}).get("legacy")
    if value is None:
        config = _saved_tokenizer_config(getattr(tokenizer, "name_or_path", "") or "")
        if config is not None:
            value = config.get("legacy", True)
    if value is None:
        value = getattr(tokenizer, "legacy", None)
    if value is None:
        return True
    if not isinstance(value, bool):
        raise TypeError(f"The tokenizer's `legacy` flag must be true, false or absent, got {value!r}.")
    return value


def _saved_tokenizer_config(name_or_path: str) -> dict | None:
    """The `tokenizer_config.json` of a local folder or of an already downloaded Hub repo, if any."""
    if not name_or_path:
        return None
    path = os.path.join(name_or_path, "tokenizer_config.json")
    if not os.path.isfile(path):
        from transformers.utils import cached_file

        try:
            path = cached_file(
                name_or_path,
                "tokenizer_config.json",
                local_files_only=True,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        except (OSError, ValueError):
            return None
        if path is None:
            return None
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _special(token):
    """Special tokens as transformers' Llama tokenizers declare them: never normalized, never stripped."""
    if isinstance(token, str):
        return AddedToken(token, normalized=False, special=True, lstrip=False, rstrip=False)
    return token


def _added_tokens_of(spec: dict) -> dict[int, AddedToken]:
    """The `added_tokens` of a tokenizer.json as `{id: AddedToken}` (used when no `added_tokens_decoder` is given)."""
    decoder = {}
    for entry in spec.get("added_tokens") or []:
        decoder[int(entry["id"])] = AddedToken(
            entry["content"],
            single_word=entry.get("single_word", False),
            lstrip=entry.get("lstrip", False),
            rstrip=entry.get("rstrip", False),
            normalized=entry.get("normalized", False),
            special=entry.get("special", True),
        )
    return decoder


SQLlavaTokenizer.register_for_auto_class("AutoTokenizer")

__all__ = ["SQLlavaTokenizer", "is_sqllava_tokenizer", "legacy_flag", "sentencepiece_backend"]
