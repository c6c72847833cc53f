"""Shared fixtures: the tiny tokenizer, processor and model are built once per test session.

The real Llama/Vicuna SentencePiece vocabulary lives outside the repository (`../shared/fixtures`, or the folder named
by `SQLLAVA_FIXTURES`); tests that need it skip with the reason when it is absent. CI always has it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_DIR = Path(os.environ.get("SQLLAVA_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))
LLAMA_GGUF = "llama-spm-vocab.gguf"

# Two CPU cores are shared by everything on CI: one intra-op thread per test process avoids oversubscription.
torch.set_num_threads(1)


def other_transformers_python() -> str | None:
    """The interpreter of the *other* supported transformers environment (4.57 when this one runs 5.x, and the
    reverse), for cross-version tests: `$SQLLAVA_OTHER_PYTHON` (CI sets it), else the repository's `.venv457` /
    `.venv`. None when absent or when it is this very environment."""
    import transformers

    if os.environ.get("SQLLAVA_OTHER_PYTHON"):
        python = Path(os.environ["SQLLAVA_OTHER_PYTHON"])
    else:
        python = (
            REPO_ROOT
            / (".venv457" if int(transformers.__version__.split(".")[0]) >= 5 else ".venv")
            / "bin"
            / "python"
        )
    # Compare environments, not interpreters: venv pythons are symlinks to the same base interpreter.
    if not python.is_file() or os.path.abspath(python.parent.parent) == os.path.abspath(sys.prefix):
        return None
    return str(python)


def run_fresh_python_json(python: str, script: str, *args: str, workdir: Path, timeout: float, **env_vars) -> dict:
    """Run `script` in a fresh `python` (another environment's, possibly) and return the JSON of its last stdout line.

    The child sees no PYTHONPATH/PYTHONHOME of ours (so it imports only what its own environment has), runs offline,
    in `workdir`, and keeps the remote-code modules it imports under `workdir/modules`; `env_vars` add variables.
    """
    import json
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(workdir / "modules"), **env_vars)
    run = subprocess.run(
        [python, "-c", script, *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def llama_vocab_available() -> bool:
    return (FIXTURES_DIR / LLAMA_GGUF).is_file()


requires_llama_vocab = pytest.mark.skipif(
    not llama_vocab_available(),
    reason=f"Llama SentencePiece vocabulary {FIXTURES_DIR / LLAMA_GGUF} not found; set SQLLAVA_FIXTURES to its folder",
)


def llama_sentencepiece_proto() -> bytes:
    """The Llama SentencePiece model rebuilt from the GGUF vocabulary fixture: its pieces, scores and types, with
    Llama's normalizer (identity, dummy prefix, spaces kept) and byte fallback. Skips the test when the fixture,
    `gguf` or `sentencepiece` is absent."""
    if not llama_vocab_available():
        pytest.skip(f"Llama vocabulary fixture absent at {FIXTURES_DIR / LLAMA_GGUF}; set SQLLAVA_FIXTURES")
    gguf = pytest.importorskip("gguf")
    pytest.importorskip("sentencepiece")
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    reader = gguf.GGUFReader(str(FIXTURES_DIR / LLAMA_GGUF))

    def field(name):
        f = reader.fields[name]
        return [f.parts[i] for i in f.data]

    pieces = [bytes(p).decode("utf-8") for p in field("tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in field("tokenizer.ggml.scores")]
    types = [int(p[0]) for p in field("tokenizer.ggml.token_type")]
    proto = model_pb2.ModelProto()
    proto.trainer_spec.model_type = model_pb2.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(pieces)
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = 0, 1, 2
    proto.trainer_spec.pad_id = -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    kind = model_pb2.ModelProto.SentencePiece
    type_map = {1: kind.NORMAL, 2: kind.UNKNOWN, 3: kind.CONTROL, 4: kind.USER_DEFINED, 5: kind.UNUSED, 6: kind.BYTE}
    for piece, score, token_type in zip(pieces, scores, types):
        entry = proto.pieces.add()
        entry.piece, entry.score, entry.type = piece, score, type_map[token_type]
    return proto.SerializeToString()


@pytest.fixture(scope="module")
def llama_tokenizer(_llama_tokenizer_loaded):
    """The real Llama-2/Vicuna tokenizer (32,000 tokens), loaded offline from the GGUF vocabulary fixture.

    A fresh copy per test module: several modules add `<image>`/`<pad>` to the tokenizer they get, which must not
    leak into the next module (its vocabulary would already hold them).
    """
    import copy

    return copy.deepcopy(_llama_tokenizer_loaded)


@pytest.fixture(scope="session")
def _llama_tokenizer_loaded():
    # Loaded once: converting the GGUF vocabulary takes ~1 s on transformers 5.x and 30-90 s on 4.57.
    if not llama_vocab_available():
        pytest.skip(f"Llama vocabulary fixture absent at {FIXTURES_DIR / LLAMA_GGUF}; set SQLLAVA_FIXTURES")
    pytest.importorskip("gguf")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(FIXTURES_DIR), gguf_file=LLAMA_GGUF)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from recipes.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_processor(tiny_tokenizer):
    from recipes.tiny import build_tiny_processor

    return build_tiny_processor(tiny_tokenizer)


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    """A fresh tiny model per test (tests mutate weights: LoRA, training steps)."""
    from recipes.tiny import build_tiny_model

    return build_tiny_model(tiny_tokenizer)
