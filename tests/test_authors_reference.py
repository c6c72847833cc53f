"""Our implementation against the authors' own code (heliossun/SQ-LLaVA), run from a local clone at test time.

The other tests compare the model, converter, processor and collator with references written here from the
authors' rules. This module runs the authors' actual files instead: it reads them from a clone of
https://github.com/heliossun/SQ-LLaVA (a git directory or a checkout; `$SQLLAVA_AUTHORS_REPO`, else the mirror at
/work/.mirror/heliossun+SQ-LLaVA/repo, at commit `$SQLLAVA_AUTHORS_REF` or the pinned one when present), writes
the few files needed into a temporary folder, imports them there, and compares. Nothing of theirs is copied into the
project; without a clone every test skips, saying so.

What runs unchanged from their code: `sqllava/model/multimodal_projector/{builder,cluster}.py` (the projector),
`sqllava/model/multimodal_encoder/clip_encoder.py` (the CLIP tower and its layer/CLS selection),
`sqllava/model/llava_arch.py` (vision-module set-up, `<image>` splicing, labels and attention mask of the spliced
sequence), the model classes of `sqllava/model/language_model/llava_llama.py` (forward and loss), and from
`train.py` the LoRA target selection, the state-dict selection of what is saved, `preprocess_multimodal`,
`preprocess` / `preprocess_v1_sq2` (prompt with the `VUSER` role and label masking) and the `LazySupervisedDataset`
item (image padding, preprocessing, tokenization). What is replaced, and why:

- the package `__init__.py` files are empty (theirs import the whole model stack, deepspeed and flash-attn);
- `train.py`'s `maybe_zero_3` becomes its own non-ZeRO branch (the function imports deepspeed first);
- the steps of `train()` and `load_pretrained_model()` that only call PEFT / `torch.save` are written out here, in
  their order, with their arguments (line numbers cited); dtype float64 instead of float16/bfloat16, to compare
  tightly;
- transformers 5.x dropped the `vision_model.` level of `CLIPVisionModel` that transformers 4.31 (theirs) had, so on
  5.x the CLIP model is wrapped to restore that module path: the PEFT keys then have the released layout
  (`base_model.model.vision_tower.vision_model.encoder.layers.N...`); PEFT on a non-`PreTrainedModel` root also
  needs a `base_model_prefix` attribute under transformers 5.x;
- the slow `LlamaTokenizer` of transformers 4.31 (`use_fast=False`, legacy) is, on transformers 5.x (which has no
  slow Llama tokenizer), SentencePiece itself on the real Llama vocabulary, split at special tokens as the slow
  tokenizer does; on transformers 4.x it is transformers' own slow `LlamaTokenizer(legacy=True)`, and a test checks
  the two agree.
"""

from __future__ import annotations

import ast
import copy
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch
from torch import nn

from tests.conftest import llama_sentencepiece_proto

torch.set_num_threads(1)

AUTHORS_REPO_ENV = "SQLLAVA_AUTHORS_REPO"
AUTHORS_REF_ENV = "SQLLAVA_AUTHORS_REF"
DEFAULT_AUTHORS_REPO = Path("/work/.mirror/heliossun+SQ-LLaVA/repo")
# The revision these tests were written against (the repository's last commit, "Update README.md").
PINNED_COMMIT = "e4baa2fe8703c026b73a487e37daad4a27b6f5cd"
IMAGE_TOKEN_INDEX, IGNORE_INDEX = -200, -100
TRANSFORMERS_5 = int(__import__("transformers").__version__.split(".")[0]) >= 5


# ------------------------------------------------------------------------------------------ reading their code


class AuthorsRepo:
    """Read-only access to one revision of the authors' repository (a git directory or a plain checkout)."""

    def __init__(self, root: Path):
        self.root = root
        probe = subprocess.run(["git", "-C", str(root), "rev-parse", "--git-dir"], capture_output=True, check=False)
        self.is_git = probe.returncode == 0
        self.ref = None
        if self.is_git:
            ref = os.environ.get(AUTHORS_REF_ENV)
            if ref is None:
                pinned = subprocess.run(
                    ["git", "-C", str(root), "cat-file", "-e", f"{PINNED_COMMIT}^{{commit}}"],
                    capture_output=True,
                    check=False,
                )
                ref = PINNED_COMMIT if pinned.returncode == 0 else "HEAD"
            self.ref = subprocess.run(
                ["git", "-C", str(root), "rev-parse", ref], capture_output=True, text=True, check=True
            ).stdout.strip()

    def read(self, path: str) -> str:
        if self.is_git:
            return subprocess.run(
                ["git", "-C", str(self.root), "show", f"{self.ref}:{path}"], capture_output=True, text=True, check=True
            ).stdout
        return (self.root / path).read_text()


def authors_repo_path() -> Path:
    candidate = os.environ.get(AUTHORS_REPO_ENV)
    return Path(candidate) if candidate else DEFAULT_AUTHORS_REPO


def find_authors_repo() -> AuthorsRepo | None:
    root = authors_repo_path()
    if not root.exists():
        return None
    repo = AuthorsRepo(root)
    try:
        repo.read("sqllava/model/multimodal_projector/cluster.py")
    except (subprocess.CalledProcessError, OSError):
        return None
    return repo


AUTHORS = find_authors_repo()
pytestmark = pytest.mark.skipif(
    AUTHORS is None,
    reason=f"the authors' repository is not available ({authors_repo_path()} missing or without "
    f"sqllava/model/multimodal_projector/cluster.py); set ${AUTHORS_REPO_ENV} to a clone of "
    "https://github.com/heliossun/SQ-LLaVA (git directory or checkout) to run these comparisons",
)

# Their files written verbatim into the temporary package; `llava/constants.py` because `llava_arch.py` and
# `llava_llama.py` import `llava.constants` (the package name of the LLaVA code base they started from).
MATERIALISED = {
    "sqllava/constants.py": "sqllava/constants.py",
    "sqllava/conversation.py": "sqllava/conversation.py",
    "sqllava/mm_utils.py": "sqllava/mm_utils.py",
    "sqllava/model/multimodal_projector/cluster.py": "sqllava/model/multimodal_projector/cluster.py",
    "sqllava/model/multimodal_projector/builder.py": "sqllava/model/multimodal_projector/builder.py",
    "sqllava/model/multimodal_encoder/clip_encoder.py": "sqllava/model/multimodal_encoder/clip_encoder.py",
    "sqllava/model/multimodal_encoder/builder.py": "sqllava/model/multimodal_encoder/builder.py",
    "sqllava/model/llava_arch.py": "sqllava/model/llava_arch.py",
    "llava/constants.py": "sqllava/constants.py",
}
PACKAGES = (
    "sqllava", "sqllava/model", "sqllava/model/multimodal_projector", "sqllava/model/multimodal_encoder", "llava",
)  # fmt: skip


def exec_definitions(source: str, filename: str, names: set[str] | None, namespace: dict) -> dict:
    """Run the top-level `def`/`class` statements of `source` (those in `names`, or all functions) in `namespace`."""
    tree = ast.parse(source, filename)
    body = [
        node
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
        and (node.name in names if names is not None else isinstance(node, ast.FunctionDef))
    ]
    # Their code, run on purpose: this is what the comparison is about.
    exec(compile(ast.Module(body=body, type_ignores=[]), filename, "exec"), namespace)  # noqa: S102
    return namespace


@pytest.fixture(scope="module")
def authors(tmp_path_factory):
    """Their modules, imported from a temporary copy of the files listed above; removed again afterwards."""
    root = tmp_path_factory.mktemp("authors_code")
    for target, source in MATERIALISED.items():
        path = root / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(AUTHORS.read(source))
    for package in PACKAGES:
        (root / package / "__init__.py").write_text("")
    clashing = [name for name in ("sqllava", "llava") if name in sys.modules]
    if clashing:
        pytest.skip(f"modules {clashing} are already imported; the authors' code needs those package names")
    sys.path.insert(0, str(root))
    try:
        import dataclasses
        import typing

        from PIL import Image
        from sqllava import constants, conversation, mm_utils
        from sqllava.model import llava_arch
        from sqllava.model.multimodal_encoder import clip_encoder
        from sqllava.model.multimodal_projector import builder as projector_builder
        from sqllava.model.multimodal_projector import cluster
        from torch.utils.data import Dataset

        # train.py: every function plus the dataset class, with the names its module-level imports provide.
        train_ns = {
            "torch": torch, "transformers": __import__("transformers"), "copy": copy, "json": json, "os": os,
            "logging": __import__("logging"), "Image": Image, "Dataset": Dataset,
            "dataclass": dataclasses.dataclass, "field": dataclasses.field,
            "conversation_lib": conversation, "tokenizer_image_token": mm_utils.tokenizer_image_token,
            "local_rank": None, "random": None,
            **{name: getattr(typing, name) for name in ("Dict", "Optional", "Sequence", "List")},
            **{name: getattr(constants, name) for name in dir(constants) if name.isupper()},
        }  # fmt: skip
        train_source = AUTHORS.read("train.py")
        exec_definitions(train_source, "train.py", None, train_ns)
        exec_definitions(train_source, "train.py", {"LazySupervisedDataset"}, train_ns)
        # `maybe_zero_3` imports deepspeed before anything else; without ZeRO it is its `else` branch.
        train_ns["maybe_zero_3"] = lambda param, ignore_status=False, name=None: param.detach().cpu().clone()

        # llava_llama.py: the three classes; not its module body, which registers "llava" with AutoConfig (taken
        # by transformers' own LLaVA today) and imports a loss module these tests do not use.
        from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel
        from transformers.modeling_outputs import CausalLMOutputWithPast

        llama_ns = {
            "torch": torch, "nn": nn, "F": torch.nn.functional, "normalize": torch.nn.functional.normalize,
            "CrossEntropyLoss": torch.nn.CrossEntropyLoss, "CausalLMOutputWithPast": CausalLMOutputWithPast,
            "LlamaConfig": LlamaConfig, "LlamaModel": LlamaModel, "LlamaForCausalLM": LlamaForCausalLM,
            "LlavaMetaModel": llava_arch.LlavaMetaModel, "LlavaMetaForCausalLM": llava_arch.LlavaMetaForCausalLM,
            **{name: getattr(typing, name) for name in ("List", "Optional", "Tuple", "Union")},
        }  # fmt: skip
        exec_definitions(
            AUTHORS.read("sqllava/model/language_model/llava_llama.py"),
            "llava_llama.py",
            {"LlavaConfig", "LlavaLlamaModel", "LlavaLlamaForCausalLM"},
            llama_ns,
        )
        yield SimpleNamespace(
            ref=AUTHORS.ref,
            constants=constants,
            conversation=conversation,
            mm_utils=mm_utils,
            cluster=cluster,
            projector_builder=projector_builder,
            clip_encoder=clip_encoder,
            llava_arch=llava_arch,
            train=train_ns,
            LlavaConfig=llama_ns["LlavaConfig"],
            LlavaLlamaForCausalLM=llama_ns["LlavaLlamaForCausalLM"],
        )
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n.split(".")[0] in ("sqllava", "llava")]:
            del sys.modules[name]


# ------------------------------------------------------------------------------------------ 1. the projector


def our_projector_config(vision_hidden: int, text_hidden: int, num_prototypes: int, iterations: int, patches: int):
    from transformers import CLIPVisionConfig, LlamaConfig

    from modeling_sqllava import SQLlavaConfig

    side = math.isqrt(patches)
    return SQLlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=2, num_attention_heads=2,
            image_size=14 * side, patch_size=14,
        ),
        text_config=LlamaConfig(
            hidden_size=text_hidden, intermediate_size=2 * text_hidden, num_hidden_layers=1, num_attention_heads=2,
            vocab_size=64, tie_word_embeddings=False,
        ),
        image_token_id=62, pad_token_id=63, num_prototypes=num_prototypes, prototype_iterations=iterations,
    )  # fmt: skip


def randomise_(module: nn.Module, seed: int) -> None:
    """Every parameter random (sim_alpha/sim_beta and the unused ln_1 too), scaled like a trained layer."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            fan_in = param.shape[-1] if param.ndim > 1 else 1
            param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) / math.sqrt(fan_in))


def test_builder_hyperparameters_are_ours(authors):
    """Their `build_vision_projector` for `mm_projector_type: cluster`: K=256 prototypes, 2 iterations, a
    Linear-QuickGELU-Linear MLP; our config defaults and the converter's constants are the same numbers."""
    from hub_upload.convert_original import ORIGINAL_NUM_PROTOTYPES, ORIGINAL_PROTOTYPE_ITERATIONS
    from modeling_sqllava import SQLlavaConfig, SQLlavaMultiModalProjector

    theirs = authors.projector_builder.build_vision_projector(
        SimpleNamespace(mm_projector_type="cluster", mm_hidden_size=24, hidden_size=40)
    )
    assert isinstance(theirs, authors.cluster.Clustering)
    assert theirs.centers_proposal.output_size == 256 and theirs.clust_itr == 2
    assert isinstance(theirs.softmax, nn.Softmax) and theirs.softmax.dim == -2  # over the prototypes of (B, K, L)
    assert [type(m).__name__ for m in theirs.mlp] == ["Linear", "QuickGELU", "Linear"]
    assert (theirs.mlp[0].in_features, theirs.mlp[0].out_features, theirs.mlp[2].out_features) == (24, 40, 40)
    x = torch.linspace(-3, 3, 13)
    assert torch.equal(theirs.mlp[1](x), x * torch.sigmoid(1.702 * x))

    defaults = SQLlavaConfig()
    assert (defaults.num_prototypes, defaults.prototype_iterations) == (256, 2)
    assert (ORIGINAL_NUM_PROTOTYPES, ORIGINAL_PROTOTYPE_ITERATIONS) == (256, 2)
    ours = SQLlavaMultiModalProjector(our_projector_config(24, 40, 256, 2, 576))
    assert torch.equal(ours.act(x), theirs.mlp[1](x))
    assert (ours.linear_1.in_features, ours.linear_1.out_features, ours.linear_2.out_features) == (24, 40, 40)


@pytest.mark.parametrize(
    "num_prototypes, iterations, patches",
    [(256, 2, 576), (7, 3, 49)],  # the released setting (built by their builder); an uneven other one
    ids=["released-256x2-576", "7x3-49"],
)
def test_prototype_projector_equals_their_cluster_module_float64(authors, num_prototypes, iterations, patches):
    """Their `Clustering` with random weights (float64) -> `convert_projector_state_dict` -> our projector: the same
    outputs and the same gradients (inputs and every weight), to float64 rounding."""
    from hub_upload.convert_original import convert_projector_state_dict
    from modeling_sqllava import SQLlavaMultiModalProjector

    vision_hidden, text_hidden = 24, 40
    if (num_prototypes, iterations) == (256, 2):
        theirs = authors.projector_builder.build_vision_projector(
            SimpleNamespace(mm_projector_type="cluster", mm_hidden_size=vision_hidden, hidden_size=text_hidden)
        )
    else:
        theirs = authors.cluster.Clustering(vision_hidden, text_hidden, num_prototypes, iterations)
    theirs = theirs.double()
    randomise_(theirs, seed=num_prototypes)
    released = {f"base_model.model.model.mm_projector.{k}": v.clone() for k, v in theirs.state_dict().items()}
    dropped = {}
    converted = convert_projector_state_dict(released, dropped_log=dropped)
    assert set(dropped) == {"projector:ln_1.weight", "projector:ln_1.bias"}

    ours = SQLlavaMultiModalProjector(
        our_projector_config(vision_hidden, text_hidden, num_prototypes, iterations, patches)
    ).double()
    ours.load_state_dict(converted, strict=True)

    x = torch.randn(2, patches, vision_hidden, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    x_theirs, x_ours = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_theirs, out_ours = theirs(x_theirs), ours(x_ours)
    assert out_ours.shape == out_theirs.shape == (2, patches, text_hidden)
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-12, atol=1e-12)

    weights = torch.randn(out_theirs.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (out_theirs * weights).sum().backward()
    (out_ours * weights).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, rtol=1e-10, atol=1e-12)
    ours_params = dict(ours.named_parameters())
    renamed = {"sim_alpha": "extractor.sim_alpha", "sim_beta": "extractor.sim_beta", "mlp.0": "linear_1",
               "mlp.2": "linear_2", "c": "extractor.c", "v": "extractor.v", "f": "extractor.f"}  # fmt: skip
    for name, param in theirs.named_parameters():
        if name.startswith("ln_1."):
            assert param.grad is None  # built, never used in forward
            continue
        module, _, leaf = name.rpartition(".")
        ours_name = renamed[name] if name in renamed else f"{renamed[module]}.{leaf}"
        torch.testing.assert_close(
            ours_params[ours_name].grad.reshape(param.shape), param.grad, rtol=1e-10, atol=1e-12
        )


# ------------------------------------------------------------------------------------------ 2. released layout


class CLIPVisionModelWithVisionModelLevel(nn.Module):
    """transformers 5.x's `CLIPVisionModel` under a `vision_model` attribute: the module path of transformers 4.31
    (`vision_model.encoder.layers.N...`) that their saved PEFT keys carry."""

    def __init__(self, clip):
        super().__init__()
        self.vision_model = clip

    def forward(self, pixel_values, output_hidden_states=False):
        return self.vision_model(pixel_values=pixel_values, output_hidden_states=output_hidden_states)

    @property
    def dtype(self):
        return self.vision_model.dtype

    @property
    def device(self):
        return self.vision_model.device

    @property
    def config(self):
        return self.vision_model.config


def load_their_vision_tower(tower) -> None:
    """Their `CLIPVisionTower.load_model()`, then the 4.31 module path restored on transformers 5.x."""
    if not tower.is_loaded:
        tower.load_model()
    if not hasattr(tower.vision_tower, "vision_model"):
        tower.vision_tower = CLIPVisionModelWithVisionModelLevel(tower.vision_tower)
    # transformers 5.x's weight-conversion lookup, which PEFT runs, reads this on the root of any model it wraps.
    tower.base_model_prefix = ""


VISION = {
    "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "image_size": 336,
    "patch_size": 14, "projection_dim": 16, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}  # fmt: skip
TEXT = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 1024, "rms_norm_eps": 1e-6, "vocab_size": 96,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False,
}  # fmt: skip
LORA = {"r": 4, "lora_alpha": 8}  # scaling 2, as their scripts' LLM (r 128, alpha 256) and ViT (r 64, alpha 128) LoRA
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def clip_image_processor():
    """openai/clip-vit-large-patch14-336's preprocessing (what `CLIPImageProcessor.from_pretrained` loads)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_center_crop=True, resample=3,
        image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def released_by_their_code(authors, tmp_path_factory):
    """A tiny SQ-LLaVA "trained" and saved by their code, in the order of their `train()` (stage 2)."""
    peft = pytest.importorskip("peft")
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("released")
    clip_dir, base_dir, out = root / "clip", root / "base", root / "sqllava-lora"
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(**VISION)).save_pretrained(clip_dir)
    clip_image_processor().save_pretrained(clip_dir)
    base = LlamaForCausalLM(LlamaConfig(**TEXT))
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    # A LLaVA-format base (ShareGPT4V's) also holds its own MLP projector, which nothing loads.
    stray = {"model.mm_projector.0.weight": torch.randn(32, 16), "model.mm_projector.0.bias": torch.randn(32)}
    base_dir.mkdir()
    torch.save({**base_state, **stray}, base_dir / "pytorch_model.bin")

    tn = authors.train
    config = authors.LlavaConfig(
        **TEXT, mm_vision_tower=str(clip_dir), mm_projector_type="cluster", mm_hidden_size=VISION["hidden_size"],
        mm_vision_select_layer=-2, mm_vision_select_feature="patch",
    )  # fmt: skip
    model = authors.LlavaLlamaForCausalLM(config)
    model.load_state_dict(base_state, strict=False)
    model = model.double()
    # train.py:1087-1103, LLM LoRA on everything but the vision modules.
    targets = tn["find_all_linear_names"](
        model, ["mm_projector", "vision_tower", "vision_resampler", "latent_tokens", "crossA_layer"]
    )
    model = peft.get_peft_model(
        model,
        peft.LoraConfig(**LORA, target_modules=targets, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM"),
    )
    # train.py:1140, initialize_vision_modules (their method): loads CLIP, marks the projector trainable. It passes
    # `data_aug` (False in their scripts) to `load_model` as `device_map`; transformers 4.31 ignored a False
    # device_map, 5.x rejects it, so the equivalent None is given.
    model_args = SimpleNamespace(
        vision_tower=str(clip_dir), mm_vision_select_layer=-2, mm_vision_select_feature="patch",
        pretrain_mm_mlp_adapter=None, mm_projector_type="cluster", data_aug=None,
    )  # fmt: skip
    model.get_model().initialize_vision_modules(model_args=model_args, fsdp=None)
    model.config.image_aspect_ratio = "pad"  # train.py:1149, from --image_aspect_ratio pad of their finetune script
    vision_tower = model.get_vision_tower()
    load_their_vision_tower(vision_tower)
    vision_tower.double()
    base_clip_state = {k: v.clone() for k, v in vision_tower.vision_tower.vision_model.state_dict().items()}
    # train.py:1165-1173, ViT LoRA.
    vit_targets = tn["find_all_linear_names"](vision_tower)
    vision_tower = peft.get_peft_model(
        vision_tower, peft.LoraConfig(**LORA, target_modules=vit_targets, lora_dropout=0.2, bias="none")
    )
    # "Training": every LoRA matrix and every projector weight moves away from its initial value.
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "mm_projector" in name:
                param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.2)
    # train.py:1239-1258, what is saved.
    lora_state = tn["get_peft_state_maybe_zero_3"](model.named_parameters(), "none")
    non_lora_state = tn["get_peft_state_non_lora_maybe_zero_3"](model.named_parameters())
    model.config.save_pretrained(out)
    model.save_pretrained(out, state_dict=lora_state)
    torch.save(non_lora_state, out / "non_lora_trainables.bin")
    vit_state = tn["get_peft_state_maybe_zero_3"](vision_tower.named_parameters(), "none")
    vision_tower.save_pretrained(out / "Vit-lora", state_dict=vit_state)
    return SimpleNamespace(
        clip_dir=clip_dir, base_dir=base_dir, out=out, base_state=base_state, base_clip_state=base_clip_state,
        targets=sorted(targets), vit_targets=sorted(vit_targets), non_lora_keys=sorted(non_lora_state),
    )  # fmt: skip


def test_their_training_code_saves_the_layout_the_converter_assumes(released_by_their_code):
    """The files their train.py writes have exactly the key layouts hub_upload/convert_original.py documents."""
    from hub_upload.convert_original import (
        LLM_LORA_PREFIXES,
        PROJECTOR_KEY_PREFIXES,
        VIT_LORA_PREFIXES,
        load_weights,
    )

    released = released_by_their_code
    assert released.targets == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert released.vit_targets == ["fc1", "fc2", "k_proj", "out_proj", "q_proj", "v_proj"]
    # non_lora_trainables: the projector only, under base_model.model.model.mm_projector., ln_1 included.
    prefix = PROJECTOR_KEY_PREFIXES[0]
    assert all(k.startswith(prefix) for k in released.non_lora_keys)
    assert {k[len(prefix) :] for k in released.non_lora_keys} == {
        "sim_alpha", "sim_beta", "c.weight", "c.bias", "v.weight", "v.bias", "f.weight", "f.bias", "ln_1.weight",
        "ln_1.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias",
    }  # fmt: skip
    config = json.loads((released.out / "config.json").read_text())
    assert (config["mm_projector_type"], config["mm_vision_select_layer"], config["mm_vision_select_feature"]) == (
        "cluster", -2, "patch",
    )  # fmt: skip
    vit = load_weights(released.out / "Vit-lora", ("adapter_model",))
    assert vit and all(
        re.match(r"base_model\.model\.vision_tower\.vision_model\.encoder\.layers\.\d+\.", k) for k in vit
    )
    assert all(k.startswith(VIT_LORA_PREFIXES[0]) for k in vit)
    # The LLM adapter also carries a copy of the ViT LoRA: it is saved from all of the model's LoRA parameters.
    llm = load_weights(released.out, ("adapter_model",))
    assert all(k.startswith(LLM_LORA_PREFIXES[0]) for k in llm)
    llm_layers = [k for k in llm if k.startswith("base_model.model.model.layers.")]
    vit_copies = [k for k in llm if k.startswith("base_model.model.model.vision_tower.vision_tower.vision_model.")]
    assert (
        len(llm_layers) == 2 * TEXT["num_hidden_layers"] * 7 and len(vit_copies) == 2 * VISION["num_hidden_layers"] * 6
    )
    assert len(llm) == len(llm_layers) + len(vit_copies)


def test_their_vision_tower_gives_the_vit_lora_no_gradient_and_the_converter_calls_it_the_identity(
    authors, released_by_their_code, tmp_path
):
    """Their CLIPVisionTower.forward runs under @torch.no_grad() (clip_encoder.py:46) and is what encode_images calls
    (llava_arch.py:99): the ViT-LoRA they add (train.py:1165-1173) never receives a gradient, so lora_B keeps PEFT's
    zero initialisation and the saved Vit-lora/ (train.py:1254-1258) is the identity, which the converter reports."""
    import peft

    from hub_upload.convert_original import build_sqllava_config, convert_state_dicts, load_weights

    released = released_by_their_code
    args = SimpleNamespace(mm_vision_select_layer=-2, mm_vision_select_feature="patch")
    tower = authors.clip_encoder.CLIPVisionTower(str(released.clip_dir), args=args, delay_load=True)
    load_their_vision_tower(tower)
    targets = authors.train["find_all_linear_names"](tower)
    wrapped = peft.get_peft_model(
        tower, peft.LoraConfig(**LORA, target_modules=targets, lora_dropout=0.2, bias="none")
    )
    wrapped.train()
    lora = [p for n, p in wrapped.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad for p in lora)
    features = tower(torch.randn(1, 3, 336, 336))
    assert features.shape == (1, 576, VISION["hidden_size"]) and not features.requires_grad  # no loss reaches it
    vit_state = authors.train["get_peft_state_maybe_zero_3"](wrapped.named_parameters(), "none")
    wrapped.save_pretrained(tmp_path / "Vit-lora", state_dict=vit_state)

    config = build_sqllava_config(
        json.loads((released.out / "config.json").read_text()),
        json.loads((released.clip_dir / "config.json").read_text()),
        vocab_size=128, image_token_id=96, pad_token_id=97,
    )  # fmt: skip
    pieces = {
        "llm_state": torch.load(released.base_dir / "pytorch_model.bin"),
        "vision_state": load_weights(released.clip_dir, ("model",)),
        "projector_state": torch.load(released.out / "non_lora_trainables.bin"),
    }
    vit = (
        load_weights(tmp_path / "Vit-lora", ("adapter_model",)),
        json.loads((tmp_path / "Vit-lora" / "adapter_config.json").read_text()),
    )
    state, report = convert_state_dicts(config, **pieces, vit_lora=vit)
    assert report["merged_lora"]["vit"] == 2 * 6 and report["identity_adapters"] == ["vit-lora"]
    without, _ = convert_state_dicts(config, **pieces)
    assert all(torch.equal(state[k], without[k]) for k in without)


def test_converted_model_equals_their_loader_and_forward(authors, released_by_their_code):
    """Their loader (builder.py `load_pretrained_model`: base, non_lora_trainables, LLM LoRA merged, CLIP loaded, ViT
    LoRA merged) and their forward (`<image>` spliced at -200, loss) against convert_state_dicts + our model, on a
    right-padded batch of two: same logits on every real position, same loss, same spliced labels."""
    import peft

    from hub_upload.convert_original import build_model, build_sqllava_config, convert_state_dicts, load_weights

    released = released_by_their_code
    # ---- their loader, builder.py:47-82 and 140-148 (float64 instead of float16).
    lora_config = authors.LlavaConfig.from_pretrained(released.out)
    theirs = authors.LlavaLlamaForCausalLM(lora_config).double()
    _, unexpected = theirs.load_state_dict(torch.load(released.base_dir / "pytorch_model.bin"), strict=False)
    assert sorted(unexpected) == ["model.mm_projector.0.bias", "model.mm_projector.0.weight"]
    non_lora = torch.load(released.out / "non_lora_trainables.bin")
    non_lora = {k.removeprefix("base_model."): v for k, v in non_lora.items()}  # builder.py:71-73
    if any(k.startswith("model.model.") for k in non_lora):
        non_lora = {k.removeprefix("model."): v for k, v in non_lora.items()}
    assert not theirs.load_state_dict(non_lora, strict=False).unexpected_keys
    theirs = peft.PeftModel.from_pretrained(theirs, str(released.out), adapter_name="ft").merge_and_unload()
    vision_tower = theirs.get_vision_tower()
    assert not vision_tower.is_loaded  # the LLM LoRA was merged before CLIP existed: its ViT copy is unused
    load_their_vision_tower(vision_tower)
    vision_tower.double()
    vision_tower = peft.PeftModel.from_pretrained(vision_tower, str(released.out / "Vit-lora")).merge_and_unload()
    merged_clip = vision_tower.vision_tower.vision_model.state_dict()
    layer0 = "encoder.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(merged_clip[layer0], released.base_clip_state[layer0])  # the ViT LoRA did load
    theirs.eval()

    # ---- ours: the converter's public functions on the same files.
    vocab, image_id, pad_id = 128, 96, 97
    config = build_sqllava_config(
        json.loads((released.out / "config.json").read_text()),
        json.loads((released.clip_dir / "config.json").read_text()),
        vocab_size=vocab, image_token_id=image_id, pad_token_id=pad_id,
    )  # fmt: skip
    adapter = (
        load_weights(released.out, ("adapter_model",)),
        json.loads((released.out / "adapter_config.json").read_text()),
    )
    vit_dir = released.out / "Vit-lora"
    vit = (load_weights(vit_dir, ("adapter_model",)), json.loads((vit_dir / "adapter_config.json").read_text()))
    state, report = convert_state_dicts(
        config,
        llm_state=torch.load(released.base_dir / "pytorch_model.bin"),
        vision_state=load_weights(released.clip_dir, ("model",)),
        projector_state=torch.load(released.out / "non_lora_trainables.bin"),
        llm_lora=adapter,
        vit_lora=vit,
    )
    # 2 layers x 7 LLM modules; CLIP layers 0-1 x 6 modules (layer 2 runs after vision_feature_layer=-2).
    assert report["merged_lora"] == {"llm": 14, "vit": 12}
    assert sum(k.startswith("llm-lora:model.vision_tower.") for k in report["dropped"]) == 3 * 6
    # That copy is saved from the same parameters as Vit-lora/ (train.py:1239-1258): every tensor of it is checked.
    assert report["vit_lora_copies_checked"] == 2 * 3 * 6 and report["identity_adapters"] == []
    ours = build_model(config, state).double().eval()

    # ---- the batch: theirs with one -200 per image (pad 0 = unk, as their collator), ours with 576 image ids.
    rows = [[1, 10, 11, 12, IMAGE_TOKEN_INDEX, 13, 14, 15, 16, 17, 2], [1, 20, 21, IMAGE_TOKEN_INDEX, 22, 23, 24, 2]]
    trained_from = [6, 5]
    length = max(map(len, rows))
    their_ids = torch.zeros(2, length, dtype=torch.long)
    their_labels = torch.full((2, length), IGNORE_INDEX)
    for i, row in enumerate(rows):
        their_ids[i, : len(row)] = torch.tensor(row)
        their_labels[i, trained_from[i] : len(row)] = torch.tensor(row[trained_from[i] :])
    their_mask = their_ids.ne(0)
    pixels = torch.randn(2, 3, 336, 336, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        their_loss, their_logits = theirs(
            input_ids=their_ids, attention_mask=their_mask, labels=their_labels, images=pixels, return_dict=False
        )[:2]
        spliced = theirs.prepare_inputs_labels_for_multimodal(their_ids, their_mask, None, their_labels, pixels)
    their_new_labels, their_new_mask = spliced[4], spliced[1]

    patches = config.image_seq_length
    our_ids, our_labels = [], []
    for i, row in enumerate(rows):
        at = row.index(IMAGE_TOKEN_INDEX)
        ids = row[:at] + [image_id] * patches + row[at + 1 :]
        labels = [IGNORE_INDEX] * len(ids)
        start = trained_from[i] + patches - 1
        labels[start:] = ids[start:]
        our_ids.append(ids)
        our_labels.append(labels)
    our_length = max(map(len, our_ids))
    ids_t = torch.full((2, our_length), pad_id)
    labels_t = torch.full((2, our_length), IGNORE_INDEX)
    mask_t = torch.zeros(2, our_length, dtype=torch.long)
    for i, (ids, labels) in enumerate(zip(our_ids, our_labels)):
        ids_t[i, : len(ids)], labels_t[i, : len(ids)], mask_t[i, : len(ids)] = (
            torch.tensor(ids), torch.tensor(labels), 1,
        )  # fmt: skip
    with torch.no_grad():
        out = ours(input_ids=ids_t, attention_mask=mask_t, pixel_values=pixels, labels=labels_t)

    assert torch.equal(their_new_labels, labels_t)
    assert torch.equal(their_new_mask.long(), mask_t)
    valid = mask_t.bool()
    theirs_valid, ours_valid = their_logits[valid], out.logits[valid][:, : TEXT["vocab_size"]]
    # The converter merges LoRA in float32: agreement to float32 rounding of the weights.
    scale = theirs_valid.abs().max()
    assert (ours_valid - theirs_valid).abs().max() / scale < 1e-5
    # Their loss is over their 96-token vocabulary; ours adds `<image>`, `<pad>` and rows up to a multiple of 64 (mean
    # rows, so their logit is the mean logit and they enter the softmax). Over the released vocabulary: the same loss.
    shifted = out.logits[:, :-1, : TEXT["vocab_size"]].reshape(-1, TEXT["vocab_size"])
    loss_released_vocab = torch.nn.functional.cross_entropy(shifted, labels_t[:, 1:].reshape(-1))
    torch.testing.assert_close(loss_released_vocab, their_loss, rtol=1e-5, atol=0)
    assert out.loss > their_loss  # the extra rows only add to the partition function


# ------------------------------------------------------------------------------------------ 3. labels (vuser)


class SlowLegacyLlamaTokenizer:
    """transformers 4.31's `LlamaTokenizer` (slow, legacy) as their train.py calls it: `tokenizer(text).input_ids`
    is BOS + SentencePiece on each segment between the special tokens `<unk>`, `<s>`, `</s>` (kept, not stripped
    around); `pad_token = unk_token` (train.py:1133); lists are padded to the longest."""

    bos_token_id, eos_token_id, unk_token_id, pad_token_id = 1, 2, 0, 0
    model_max_length = 2048
    _SPECIALS: ClassVar[dict[str, int]] = {"<unk>": 0, "<s>": 1, "</s>": 2}

    def __init__(self, sp):
        self.sp = sp

    def encode(self, text: str) -> list[int]:
        ids = [self.bos_token_id]
        for segment in re.split(r"(<unk>|<s>|</s>)", text):
            if segment in self._SPECIALS:
                ids.append(self._SPECIALS[segment])
            elif segment:
                ids.extend(self.sp.encode(segment))
        return ids

    def __call__(self, text, return_tensors=None, padding=None, max_length=None, truncation=None):
        if isinstance(text, str):
            return SimpleNamespace(input_ids=self.encode(text))
        batch = [self.encode(t)[: max_length if truncation else None] for t in text]
        longest = max(map(len, batch))
        padded = [ids + [self.pad_token_id] * (longest - len(ids)) for ids in batch]
        return SimpleNamespace(input_ids=torch.tensor(padded) if return_tensors == "pt" else padded)


@pytest.fixture(scope="module")
def their_tokenizer(tmp_path_factory):
    """transformers' own slow legacy LlamaTokenizer on transformers 4.x; the SentencePiece equivalent on 5.x."""
    proto = llama_sentencepiece_proto()  # skips when the vocabulary fixture is absent
    import sentencepiece

    if TRANSFORMERS_5:
        return SlowLegacyLlamaTokenizer(sentencepiece.SentencePieceProcessor(model_proto=proto))
    from transformers import LlamaTokenizer

    path = tmp_path_factory.mktemp("spm") / "tokenizer.model"
    path.write_bytes(proto)
    tokenizer = LlamaTokenizer(vocab_file=str(path), legacy=True, add_bos_token=True, add_eos_token=False)
    tokenizer.pad_token = tokenizer.unk_token
    tokenizer.model_max_length = 2048
    return tokenizer


@pytest.fixture(scope="module")
def llama_processor(llama_tokenizer):
    from processing import SQLlavaProcessor, add_sqllava_special_tokens, build_image_processor

    tokenizer = copy.deepcopy(llama_tokenizer)
    add_sqllava_special_tokens(tokenizer)
    return SQLlavaProcessor(build_image_processor(336), tokenizer, image_seq_length=576)


# LLaVA-JSON records as their data is: `<image>` anywhere in the first human turn, answers with digits (a lone "▁"
# token before them), newlines, quotes; an image-only first turn; a text-only sample; a single-turn sample.
RECORDS = [
    {"id": "mixed", "image": "wide.png", "conversations": [
        {"from": "human", "value": "What is shown here?\n<image>"},
        {"from": "gpt", "value": "A red bus parked next to 2 bicycles.\nThe sky is clear."},
        {"from": "human", "value": "How many wheels can you see?"}, {"from": "gpt", "value": "6"},
        {"from": "human", "value": "What colour is the bus?"}, {"from": "gpt", "value": "It is red, with a \"42\" sign."},
        {"from": "human", "value": "Is it raining?"}, {"from": "gpt", "value": "No."}]},
    {"id": "image-only-first-turn", "image": "tall.png", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "A lighthouse on a cliff."},
        {"from": "human", "value": "What time of day is it?"}, {"from": "gpt", "value": "Around sunset."},
        {"from": "human", "value": "Why would someone build it there?"},
        {"from": "gpt", "value": "To warn ships away from the rocks below."}]},
    {"id": "text-only", "conversations": [
        {"from": "human", "value": "Name a primary colour."}, {"from": "gpt", "value": "Blue."},
        {"from": "human", "value": "And another one?"}, {"from": "gpt", "value": "Red."}]},
    {"id": "single-turn", "image": "wide.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image briefly."}, {"from": "gpt", "value": "A bus."}]},
]  # fmt: skip


def collapse_image_run(ids: list[int], labels: list[int], image_id: int, length: int) -> tuple[list[int], list[int]]:
    """Our sequence with its `length` image ids replaced by their single -200 position (label -100)."""
    if image_id not in ids:
        return ids, labels
    at = ids.index(image_id)
    assert ids[at : at + length] == [image_id] * length and image_id not in ids[at + length :]
    assert labels[at : at + length] == [IGNORE_INDEX] * length
    return ids[:at] + [IMAGE_TOKEN_INDEX] + ids[at + length :], labels[:at] + [IGNORE_INDEX] + labels[at + length :]


@pytest.fixture(scope="module")
def llava_json(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("llava_json")
    generator = torch.Generator().manual_seed(5)
    for name, size in (("wide.png", (48, 30)), ("tall.png", (20, 36))):
        pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / name)
    (folder / "data.json").write_text(json.dumps(RECORDS))
    return folder


def mixed_seed(sq_ratio: float) -> int:
    """A seed whose draw for the first record converts some later user turns but not all (0 when sq_ratio is 0/1)."""
    from recipes.collator import vuser_draw

    if sq_ratio in (0.0, 1.0):
        return 0
    return next(
        s for s in range(1000) if 0 < sum(vuser_draw(s, 0, 0, 3, sq_ratio)) < 3 and vuser_draw(s, 0, 0, 3, sq_ratio)[0]
    )


@pytest.mark.parametrize("sq_ratio", [0.0, 0.5, 1.0])
def test_collator_equals_their_dataset_item(authors, their_tokenizer, llama_processor, llava_json, sq_ratio):
    """For every record of a LLaVA JSON: their `LazySupervisedDataset.__getitem__` (v1_sq template, the same user
    turns drawn as vuser) and our `load_llava_json` + `SelfQuestioningCollator` give the same input ids (our 576 image
    ids = their one -200), the same labels and the same pixels."""
    from recipes.collator import SelfQuestioningCollator, vuser_draw
    from recipes.data import load_llava_json

    tn = authors.train
    # train.py:1134-1135 with --version v1_sq.
    authors.conversation.default_conversation = authors.conversation.conv_templates["v1_sq"]
    data_args = SimpleNamespace(
        image_folder=str(llava_json), image_processor=clip_image_processor(), image_aspect_ratio="pad",
        is_multimodal=True, mm_use_im_start_end=False, sq_r=sq_ratio,
    )  # fmt: skip
    their_dataset = tn["LazySupervisedDataset"](str(llava_json / "data.json"), their_tokenizer, data_args)
    seed = mixed_seed(sq_ratio)
    collator = SelfQuestioningCollator(
        llama_processor, sq_ratio=sq_ratio, seed=seed, max_length=None, pad_to_multiple_of=None
    )
    ours_dataset = load_llava_json(llava_json / "data.json", llava_json, strict=True)
    assert len(ours_dataset) == len(their_dataset) == len(RECORDS)
    image_id = llama_processor.image_token_id
    converted = 0
    for index in range(len(RECORDS)):
        record = ours_dataset[index]
        later = sum(m["role"] == "user" for m in record["messages"]) - 1
        draws = vuser_draw(seed, 0, record["index"], later, sq_ratio) if record["images"] else []
        converted += sum(draws)
        calls = []

        def scripted_random(calls=calls, draws=draws):  # their `random()`: once per later human turn with an image
            calls.append(None)
            return 0.0 if draws[len(calls) - 1] else 1.0

        tn["random"] = scripted_random
        item = their_dataset[index]
        assert len(calls) == len(draws)

        batch = collator([record])
        ids, labels = collapse_image_run(
            batch["input_ids"][0].tolist(), batch["labels"][0].tolist(), image_id, llama_processor.image_seq_length
        )
        assert ids == item["input_ids"].tolist(), record["id"]
        assert labels == item["labels"].tolist(), record["id"]
        assert any(label != IGNORE_INDEX for label in labels)
        assert bool(batch["question_mask"].any()) == any(draws)  # vuser questions are trained exactly when drawn
        if record["images"]:
            torch.testing.assert_close(batch["pixel_values"][0], item["image"], rtol=0, atol=1e-6)
    if sq_ratio > 0:
        assert converted > 0


def test_slow_tokenizer_stand_in_equals_transformers_slow_llama_tokenizer(their_tokenizer):
    """On transformers 4.x the comparison above uses transformers' slow `LlamaTokenizer(legacy=True)`; this checks
    that the SentencePiece stand-in used on 5.x gives the same ids on the strings that occur there."""
    if TRANSFORMERS_5:
        pytest.skip("transformers 5.x has no slow Llama tokenizer; run under transformers 4.x (.venv457)")
    import sentencepiece

    stand_in = SlowLegacyLlamaTokenizer(sentencepiece.SentencePieceProcessor(model_proto=llama_sentencepiece_proto()))
    texts = [
        "A chat between a curious user and an artificial intelligence assistant. USER: ",
        (
            "\nWhat is shown here? ASSISTANT: A red bus parked next to 2 bicycles.\nThe sky is clear.</s>VUSER: How "
            "many wheels can you see?</s> ASSISTANT: 6</s>USER: Is it raining? ASSISTANT: No.</s>"
        ),
        "VUSER: ",
        " ASSISTANT: ",
        'It is red, with a "42" sign.</s>',
    ]
    for text in texts:
        assert their_tokenizer(text).input_ids == stand_in(text).input_ids, text


# ------------------------------------------------------------------------------------------ 4. self-questioning


def test_self_question_prompts_equal_their_v1_sq_conversation(authors, tiny_processor, monkeypatch):
    """recipes/self_question.py against their demo/visual_questioning.py (sqllava/eval/visual_sq.py is the same):
    the description request and the question prompt are their `v1_sq` conversation's `get_prompt()`, with the BOS
    their `tokenizer_image_token` adds. (Their scripts call `conv.clear_message()`, which their Conversation class
    does not define; the conversation it means, the request then the description then `VUSER`, is built here.)"""
    from PIL import Image

    from recipes.self_question import self_question
    from tests.test_self_question import ScriptedModel, record_prompts

    description = "A red square."
    model = ScriptedModel(tiny_processor.tokenizer, description)
    prompts = record_prompts(tiny_processor, monkeypatch)
    self_question(model, tiny_processor, Image.new("RGB", (56, 56), "white"), num_questions=1)

    template = authors.conversation.conv_templates["v1_sq"]
    request = authors.constants.DEFAULT_IMAGE_TOKEN + "\n" + "Can you describe the image in detail?"
    conv = template.copy()
    conv.append_message(conv.roles[0], request)
    conv.append_message(conv.roles[1], None)
    their_describe = conv.get_prompt()
    conv = template.copy()
    conv.append_message(conv.roles[0], request)
    conv.append_message(conv.roles[1], description)
    conv.append_message(conv.roles[2], None)
    their_ask = conv.get_prompt()
    assert not hasattr(template, "clear_message")
    assert prompts == [["<s>" + their_describe], ["<s>" + their_ask]]
    describe, ask = model.calls
    assert describe["max_new_tokens"] == 1024 and describe["do_sample"] is False
    assert (ask["temperature"], ask["top_k"], ask["top_p"], ask["max_new_tokens"]) == (1.2, 300, 0.95, 300)
