"""`hub_upload.push` against the local fake Hub (tests/hub_server.py): push, re-push, branches, PRs, dry run, and a
`from_pretrained` download into an empty cache in a fresh process whose logits match the pushed model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from hub_upload.push import UploadRefusedError, plan_upload, push_folder
from hub_upload.push import main as push_main
from hub_upload.safety import pickle_reason
from tests.conftest import other_transformers_python
from tests.hub_server import FakeHub, fake_hub  # noqa: F401 - pytest fixture

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "tester/tiny-llama"
INPUT_IDS = [[1, 5, 17, 42, 99, 3, 64, 7]]


def _local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture()
def llama_folder(tmp_path):
    """A tiny LlamaForCausalLM saved with save_pretrained (safetensors -> LFS), plus small extra files."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config).eval()
    folder = tmp_path / "export"
    model.save_pretrained(folder)
    (folder / "README.md").write_text("---\nlibrary_name: transformers\nlicense: apache-2.0\n---\n# tiny\n")
    (folder / "extra").mkdir()
    (folder / "extra" / "notes.json").write_text(json.dumps({"purpose": "push round trip"}))
    # Never uploaded: bytecode caches.
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    with torch.no_grad():
        logits = model(torch.tensor(INPUT_IDS)).logits
    return folder, logits


def _major_version(python: str) -> int:
    out = subprocess.run([python, "-c", "import transformers; print(transformers.__version__)"], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.strip().split(".")[0])


def _load_in_fresh_process(
    hub: FakeHub, tmp_path: Path, script: str, python: str = sys.executable, inputs: dict | None = None
) -> torch.Tensor:
    """Run `script` in a new interpreter pointed at the fake Hub with an empty HF_HOME, outside the repository;
    the script saves its logits to `out.pt` (path in argv[1]); `inputs` are saved beside it as `inputs.pt`."""
    hf_home = tmp_path / "empty_hf_home"
    hf_home.mkdir()
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    if inputs is not None:
        torch.save(inputs, workdir / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "PYTHONPATH", "TRANSFORMERS"))}
    env.update(hub.client_env(str(hf_home)))
    out = workdir / "out.pt"
    proc = subprocess.run(
        [python, "-c", textwrap.dedent(script), str(out)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    # The files came from the server, into the empty cache.
    snapshots = list((hf_home / "hub").glob("models--*/snapshots/*"))
    assert snapshots, f"nothing downloaded into {hf_home}"
    return torch.load(out)


def test_push_round_trip_from_pretrained_in_empty_cache(fake_hub, llama_folder, tmp_path):  # noqa: F811
    """Push creates the repo and one commit holding exactly the folder; a fresh process downloads it into an empty
    cache with `from_pretrained(repo_id)` and gets the original logits."""
    folder, logits = llama_folder
    url = push_folder(folder, REPO_ID, commit_message="first push")

    head = fake_hub.repo(REPO_ID).branches["main"]
    assert url.endswith(f"/{REPO_ID}/commit/{head}")
    assert fake_hub.num_commits(REPO_ID) == 2  # the repo's initial commit + ours
    expected = {k: v for k, v in _local_files(folder).items() if not k.startswith("__pycache__")}
    remote = fake_hub.files(REPO_ID)
    assert remote.pop(".gitattributes")
    assert remote == expected
    # Weights went through Git-LFS (batch + upload + verify), small files inline.
    assert fake_hub.repo(REPO_ID).commits[head].files["model.safetensors"].is_lfs
    assert not fake_hub.repo(REPO_ID).commits[head].files["config.json"].is_lfs

    script = f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained("{REPO_ID}").eval()
        with torch.no_grad():
            torch.save(model(torch.tensor({INPUT_IDS!r})).logits, sys.argv[1])
    """
    loaded = _load_in_fresh_process(fake_hub, tmp_path, script)
    torch.testing.assert_close(loaded, logits, rtol=1e-5, atol=1e-6)
    downloads = [path for method, path, status in fake_hub.requests if method == "GET" and status == 200]
    assert any(path.endswith("/config.json") for path in downloads)
    assert any(path.startswith("/__lfs__/objects/") for path in downloads)  # the weights, through the redirect
    assert fake_hub.unknown_routes == []


def test_second_push_is_a_no_op(fake_hub, llama_folder):  # noqa: F811
    """Re-pushing an unchanged folder makes no commit and returns the head commit; a changed file makes one commit
    with only that file."""
    folder, _ = llama_folder
    first = push_folder(folder, REPO_ID)
    commits = fake_hub.num_commits(REPO_ID)
    assert push_folder(folder, REPO_ID) == first
    assert fake_hub.num_commits(REPO_ID) == commits

    (folder / "extra" / "notes.json").write_text("{}")
    third = push_folder(folder, REPO_ID)
    assert third != first and fake_hub.num_commits(REPO_ID) == commits + 1
    assert fake_hub.files(REPO_ID)["extra/notes.json"] == b"{}"


def test_create_repo_is_idempotent_and_private(fake_hub, llama_folder):  # noqa: F811
    folder, _ = llama_folder
    push_folder(folder, REPO_ID, private=True)
    push_folder(folder, REPO_ID, private=True)  # exists already: no error
    assert len(fake_hub.repos) == 1 and fake_hub.repo(REPO_ID).private
    HfApi(endpoint=fake_hub.endpoint).create_repo(REPO_ID, exist_ok=True)
    with pytest.raises(HfHubHTTPError):
        HfApi(endpoint=fake_hub.endpoint).create_repo(REPO_ID, exist_ok=False)
    # Private: invisible without the token, visible with it.
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=fake_hub.endpoint, token=False).model_info(REPO_ID)
    info = HfApi(endpoint=fake_hub.endpoint).model_info(REPO_ID)
    assert info.private and "model.safetensors" in {s.rfilename for s in info.siblings}


def test_push_to_branch_and_pull_request(fake_hub, llama_folder):  # noqa: F811
    """`revision` creates the branch from main and leaves main alone; `create_pr` opens a PR ref."""
    folder, _ = llama_folder
    push_folder(folder, REPO_ID)
    main_head = fake_hub.repo(REPO_ID).branches["main"]

    (folder / "extra" / "notes.json").write_text('{"branch": "dev"}')
    url = push_folder(folder, REPO_ID, revision="dev", commit_message="dev push")
    repo = fake_hub.repo(REPO_ID)
    assert repo.branches["main"] == main_head
    assert url.endswith(repo.branches["dev"]) and repo.commits[repo.branches["dev"]].parent == main_head
    assert fake_hub.files(REPO_ID, "dev")["extra/notes.json"] == b'{"branch": "dev"}'
    assert push_folder(folder, REPO_ID, revision="dev") == url  # idempotent on the branch too

    pr_url = push_folder(folder, REPO_ID, create_pr=True)
    assert pr_url.endswith("/discussions/1") and "refs/pr/1" in repo.branches
    assert repo.branches["main"] == main_head
    assert HfApi(endpoint=fake_hub.endpoint).list_repo_files(REPO_ID, revision="dev")


def test_dry_run_makes_no_request(fake_hub, llama_folder, capsys, monkeypatch):  # noqa: F811
    """A dry run prints paths and sizes and sends nothing (it also needs no token)."""
    folder, _ = llama_folder
    monkeypatch.delenv("HF_TOKEN")
    before = len(fake_hub.requests)
    planned = push_folder(folder, REPO_ID, dry_run=True, private=True, revision="dev")
    assert len(fake_hub.requests) == before and not fake_hub.repos
    paths = [item.path_in_repo for item in planned]
    assert paths == sorted(paths) and "model.safetensors" in paths and "extra/notes.json" in paths
    assert not any("__pycache__" in path for path in paths)
    out = capsys.readouterr().out
    assert f"{REPO_ID}@dev" in out and "model.safetensors" in out and f"total ({len(planned)} files)" in out
    assert {item.size for item in planned if item.path_in_repo == "config.json"} == {
        (folder / "config.json").stat().st_size
    }


def test_cli_dry_run(fake_hub, llama_folder, capsys):  # noqa: F811
    folder, _ = llama_folder
    push_main([str(folder), REPO_ID, "--private", "--revision", "dev", "--dry-run"])
    assert "model.safetensors" in capsys.readouterr().out
    assert not fake_hub.requests


def test_cli_push(fake_hub, llama_folder, capsys):  # noqa: F811
    folder, _ = llama_folder
    push_main([str(folder), REPO_ID, "--commit-message", "from the CLI"])
    head = fake_hub.repo(REPO_ID).branches["main"]
    assert fake_hub.repo(REPO_ID).commits[head].title == "from the CLI"
    assert head in capsys.readouterr().out


# ------------------------------------------------------------------------------ what may leave the folder


class _WritesMarker:
    """Unpickling this runs `exec`: it writes MARKER_TEXT to the path given (what a hostile pickle does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


FAKE_TOKEN = "hf_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3h"  # the shape of a Hugging Face token, not a real one


def _plant_hostile_files(folder: Path, marker: Path) -> dict[str, str]:
    """Links, secrets and pickles under every disguise; returns {path in folder: the kind the push must name}."""
    import pickle
    import zlib

    import numpy as np

    outside = folder.parent / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for publication")
    target = "/etc/passwd" if Path("/etc/passwd").is_file() else str(outside / "secret.txt")
    (folder / "leak.txt").symlink_to(target)
    (folder / "alias.json").symlink_to("config.json")  # a link inside the folder is refused too: regular files only
    (folder / "linked_dir").symlink_to(outside, target_is_directory=True)
    (folder / ".env").write_text(f"HF_TOKEN={FAKE_TOKEN}\n")
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_text("[remote]\n\turl = https://user:secret@example.com/x.git\n")
    (folder / "notes.txt").write_text(f"remember to rotate {FAKE_TOKEN}\n")  # a token by content
    payload = pickle.dumps({"weights": _WritesMarker(marker)})
    (folder / "model-00002.safetensors").write_bytes(payload)  # a raw pickle named like weights
    (folder / "scaler.joblib").write_bytes(zlib.compress(payload))  # joblib.dump(..., compress=...)
    np.save(folder / "features.npy", np.array([_WritesMarker(marker)], dtype=object), allow_pickle=True)
    torch.save({"payload": _WritesMarker(marker)}, folder / "weights.bin")  # the torch.save zip (data.pkl)
    return {
        "leak.txt": "symbolic link", "alias.json": "symbolic link", "linked_dir": "symbolic link",
        ".env": "environment file", ".git/": "git folder", "notes.txt": "Hugging Face access token",
        "model-00002.safetensors": "pickle stream", "scaler.joblib": "compressed with zlib",
        "features.npy": "object dtype", "weights.bin": "data.pkl",
    }  # fmt: skip


def test_links_secrets_and_pickles_are_refused_before_anything_is_sent(fake_hub, llama_folder, capsys):  # noqa: F811
    """A link to /etc/passwd, a .env with a token, a .git folder, a token in a text file and pickles disguised as
    safetensors / joblib / npy / a torch.save .bin: the push (and the dry run, and the CLI) refuses, naming every one,
    sends nothing and unpickles nothing."""
    folder, _ = llama_folder
    marker = folder.parent / "MARKER"
    expected = _plant_hostile_files(folder, marker)

    for kwargs in ({}, {"dry_run": True}):
        with pytest.raises(UploadRefusedError) as excinfo:
            push_folder(folder, REPO_ID, **kwargs)
        message = str(excinfo.value)
        assert {r.path for r in excinfo.value.refusals} == set(expected)
        for path, kind in expected.items():
            line = next(line for line in message.splitlines() if line.startswith(f"  {path}: "))
            assert kind in line, (path, line)
        assert "nothing was sent" in message and "--allow-pickle model-00002.safetensors" in message
    assert "/etc/passwd" in message or "outside" in message  # the link's target is shown
    assert FAKE_TOKEN not in message  # the refusal does not print the secret it found

    with pytest.raises(SystemExit) as exit_info:
        push_main([str(folder), REPO_ID, "--dry-run"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("[dry run] Refusing to upload") and all(f"  {path}: " in err for path in expected)
    assert fake_hub.requests == [] and not fake_hub.repos
    assert not marker.exists()

    # The payloads are live: plain unpickling (what loading them would do) writes the marker.
    script = f"import pickle; pickle.loads(open({str(folder / 'model-00002.safetensors')!r}, 'rb').read())"
    subprocess.run([sys.executable, "-c", script], check=True, cwd=folder.parent, timeout=60)
    assert marker.read_text() == "pwned"


def test_allow_pickle_names_each_file_it_allows(fake_hub, llama_folder, capsys):  # noqa: F811
    folder, _ = llama_folder
    torch.save({"learning_rate": 2e-4}, folder / "training_args.bin")
    torch.save({"step": 3}, folder / "extra" / "optimizer.pt")
    (folder / "extra" / "raw.bin").write_bytes(bytes(range(256)) * 4)  # a .bin that is no pickle goes up

    with pytest.raises(UploadRefusedError, match=r"(?s)extra/optimizer.pt: a zip archive holding .*data.pkl") as info:
        push_folder(folder, REPO_ID, allow_pickle=["training_args.bin"], dry_run=True)
    assert [r.path for r in info.value.refusals] == ["extra/optimizer.pt"]
    planned = plan_upload(folder, allow_pickle=["training_args.bin", "./extra/optimizer.pt"])
    paths = {item.path_in_repo for item in planned}
    assert {"training_args.bin", "extra/optimizer.pt", "extra/raw.bin", "model.safetensors"} <= paths
    with pytest.raises(ValueError, match=r"allow_pickle names \['config.json'\], which is not a pickle"):
        plan_upload(folder, allow_pickle=["config.json", "training_args.bin", "extra/optimizer.pt"])
    with pytest.raises(TypeError, match="must list the paths"):
        plan_upload(folder, allow_pickle=True)

    push_main([str(folder), REPO_ID, "--allow-pickle", "training_args.bin", "--allow-pickle", "extra/optimizer.pt"])
    assert {"training_args.bin", "extra/optimizer.pt"} <= set(fake_hub.files(REPO_ID))


def _safetensors_with_header_starting(path: Path, prefix: bytes) -> Path:
    """A valid safetensors file whose 8-byte header length begins with `prefix` (e.g. a pickle PROTO opcode)."""
    from safetensors.torch import save_file

    wanted = int.from_bytes(prefix + b"\0" * (8 - len(prefix)), "little")
    for pad in range(4096):
        save_file({"w": torch.zeros(4)}, str(path), metadata={"pad": "x" * pad})
        if int.from_bytes(path.read_bytes()[:8], "little") == wanted:
            return path
    raise AssertionError("could not build the header")


def test_pickle_detection_reads_content_not_names(tmp_path, tiny_tokenizer):
    """Every pickle format is recognised under any name; model files that are not pickles are never refused."""
    import bz2
    import gzip
    import lzma
    import pickle
    import zlib

    import numpy as np

    marker = tmp_path / "MARKER"
    payload = pickle.dumps(_WritesMarker(marker))
    pickles = {
        "p0.txt": pickle.dumps([1, "a"], protocol=0), "p1.json": pickle.dumps([1, "a"], protocol=1),
        "p2.model": pickle.dumps({"k": 1}, protocol=2), "p5.safetensors": payload,
        "legacy.pt": None, "zipped.bin": None, "renamed.zip": None, "objects.npz": None, "objects.npy": None,
        "gz.joblib": gzip.compress(payload), "zlib.joblib": zlib.compress(payload),
        "bz2.joblib": bz2.compress(payload),
        "xz.joblib": lzma.compress(payload), "lzma.joblib": lzma.compress(payload, format=lzma.FORMAT_ALONE),
        # A payload hidden behind a 3 MB string: more than the bytes the check reads, still caught.
        "padded.txt": pickle.dumps(["y" * 3_000_000, _WritesMarker(marker)], protocol=0),
        "padded.pkl": pickle.dumps([b"y" * 3_000_000, _WritesMarker(marker)]),
    }  # fmt: skip
    for name, data in pickles.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    torch.save({"w": torch.zeros(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"w": torch.zeros(2)}, tmp_path / "zipped.bin")
    import zipfile

    with zipfile.ZipFile(tmp_path / "renamed.zip", "w") as archive:
        archive.writestr("archive/weights", payload)
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    np.save(tmp_path / "objects.npy", np.zeros(2, dtype=[("a", "f4"), ("b", "O")]), allow_pickle=True)
    for name in pickles:
        assert pickle_reason(tmp_path / name) is not None, name

    clean = tmp_path / "clean"
    clean.mkdir()
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(8)}, str(clean / "model.safetensors"))
    _safetensors_with_header_starting(clean / "looks-like-proto.safetensors", b"\x80\x02")
    np.save(clean / "floats.npy", np.zeros(3, dtype=np.float32))
    np.savez_compressed(clean / "floats.npz", a=np.zeros(3))
    tiny_tokenizer.save_pretrained(clean)  # tokenizer.json, tokenizer_config.json, special_tokens_map.json, ...
    (clean / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (clean / "README.md").write_text("---\nlicense: mit\n---\n# card\n")
    (clean / "merges.txt").write_text("#version: 0.2\na b\n")
    (clean / "random.bin").write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                                     dtype=torch.uint8).numpy().tobytes())  # fmt: skip
    (clean / "notes.json.gz").write_bytes(gzip.compress(b'{"a": 1}'))
    (clean / "empty.bin").write_bytes(b"")
    (clean / "stop.bin").write_bytes(b".")  # a lone STOP opcode: not a loadable pickle
    for path in sorted(clean.iterdir()):
        assert pickle_reason(path) is None, path.name
    assert plan_upload(clean)  # and the folder goes up as it is
    assert not marker.exists()


@pytest.mark.parametrize(
    "name",
    [".env", ".env.production", "prod.env", ".envrc", ".netrc", "_netrc", ".git-credentials", ".pypirc", "server.pem",
     "tls.key", "id_rsa", "id_ed25519.pub", "token", "stored_tokens", "hub.token", "HF_TOKEN.txt", "credentials",
     ".ssh/known_hosts", ".huggingface/token", "sub/.aws/config", ".docker/config.json"],
)  # fmt: skip
def test_secret_names_are_refused_anywhere(tmp_path, name):
    (tmp_path / "config.json").write_text("{}")
    path = tmp_path / "nested" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    with pytest.raises(UploadRefusedError, match="Secrets: move these files out of the folder") as info:
        plan_upload(tmp_path)
    (refusal,) = info.value.refusals
    assert refusal.kind == "secret" and (refusal.path == f"nested/{name}" or f"nested/{name}".startswith(refusal.path))


def test_model_repo_files_are_not_mistaken_for_secrets(tmp_path):
    names = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
             "added_tokens.json", "preprocessor_config.json", "processor_config.json", "chat_template.jinja",
             "generation_config.json", "README.md", "environment.yml", "keys.json", "token_ids.txt", ".gitattributes"]
    for name in names:
        (tmp_path / name).write_text("{}")
    assert [item.path_in_repo for item in plan_upload(tmp_path)] == sorted(names)


def test_python_m_hub_upload_push_runs_without_runpy_warning(tmp_path):
    """`python -m hub_upload.push` must not find a half-imported hub_upload.push (runpy's RuntimeWarning), and the
    package's names stay importable."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "hub_upload.push", str(tmp_path), "a/b", "--dry-run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "RuntimeWarning" not in result.stderr and "found in sys.modules" not in result.stderr, result.stderr
    assert "holds no file to upload" in result.stderr
    from hub_upload import PlannedFile, UploadRefusedError, plan_upload, push_folder, render_model_card  # noqa: F401

    assert callable(push_folder) and callable(render_model_card)


def test_delete_missing_removes_stale_files(fake_hub, llama_folder):  # noqa: F811
    folder, _ = llama_folder
    push_folder(folder, REPO_ID)
    (folder / "extra" / "notes.json").unlink()
    push_folder(folder, REPO_ID)
    assert "extra/notes.json" in fake_hub.files(REPO_ID)  # plain push never deletes
    push_folder(folder, REPO_ID, delete_missing=True)
    remote = fake_hub.files(REPO_ID)
    assert "extra/notes.json" not in remote and ".gitattributes" in remote and "model.safetensors" in remote


def test_token_errors(fake_hub, llama_folder, monkeypatch):  # noqa: F811
    folder, _ = llama_folder
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ValueError, match="No Hugging Face token found"):
        push_folder(folder, REPO_ID)
    with pytest.raises(HfHubHTTPError) as excinfo:
        push_folder(folder, REPO_ID, token="hf_wrong")
    assert excinfo.value.response.status_code == 401
    assert push_folder(folder, REPO_ID, token=fake_hub.token)  # explicit token works without HF_TOKEN


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"repo_id": "no-namespace"}, "repo_id='no-namespace'"), ({"revision": ""}, "revision=''")],
)
def test_invalid_arguments(tmp_path, kwargs, match):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=match):
        push_folder(tmp_path, **{"repo_id": REPO_ID, "dry_run": True, **kwargs})
    with pytest.raises(ValueError, match="is not a directory"):
        push_folder(tmp_path / "missing", REPO_ID, dry_run=True)


def test_fake_hub_reports_unknown_routes(fake_hub):  # noqa: F811
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(f"{fake_hub.endpoint}/api/not-a-route", timeout=10)
    assert excinfo.value.code == 404
    assert "route not implemented: GET /api/not-a-route" in excinfo.value.read().decode()
    assert fake_hub.unknown_routes == ["GET /api/not-a-route"]


def _sqllava_available() -> bool:
    try:
        from modeling_sqllava import SQLlavaForConditionalGeneration  # noqa: F401
        from recipes.tiny import tiny_model_config  # noqa: F401
    except ImportError:
        return False
    return True


SQLLAVA_SCRIPT = """
    import sys, torch
    import transformers
    from transformers import {auto_class}
    model = {auto_class}.from_pretrained("{repo_id}", trust_remote_code=True).eval()
    assert type(model).__name__ == "SQLlavaForConditionalGeneration", type(model)
    # The class must come from the downloaded remote code, not from an importable local package.
    assert "transformers_modules" in type(model).__module__, type(model).__module__
    inputs = torch.load(sys.argv[1].replace("out.pt", "inputs.pt"))
    with torch.no_grad():
        torch.save(model(**inputs).logits, sys.argv[1])
"""


@pytest.mark.slow
@pytest.mark.skipif(not _sqllava_available(), reason="modeling_sqllava / recipes.tiny not importable yet")
def test_sqllava_round_trip_with_remote_code(fake_hub, tmp_path):  # noqa: F811
    """A tiny SQLlavaForConditionalGeneration saved with save_pretrained ships its code; after the push a fresh
    process loads it from the fake Hub with AutoModelForImageTextToText + trust_remote_code and matches logits
    (and with AutoModelForVision2Seq under transformers 4.57 when that venv exists)."""
    from modeling_sqllava import SQLlavaForConditionalGeneration
    from recipes.tiny import tiny_model_config

    config = tiny_model_config(vocab_size=128)
    torch.manual_seed(0)
    model = SQLlavaForConditionalGeneration(config).eval()
    folder = tmp_path / "sqllava-export"
    model.save_pretrained(folder)
    assert {"configuration_sqllava.py", "modeling_sqllava.py"} <= {p.name for p in folder.glob("*.py")}
    assert "AutoModelForImageTextToText" in json.loads((folder / "config.json").read_text())["auto_map"]

    num_image_tokens = config.image_seq_length
    input_ids = torch.tensor([[1, 5] + [config.image_token_id] * num_image_tokens + [17, 42, 9]])
    size = config.vision_config.image_size
    inputs = {
        "input_ids": input_ids,
        "pixel_values": torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)),
    }
    with torch.no_grad():
        expected = model(**inputs).logits

    repo_id = "tester/tiny-sqllava"
    push_folder(folder, repo_id)
    assert {"configuration_sqllava.py", "modeling_sqllava.py"} <= set(fake_hub.files(repo_id))

    runs = [("new", sys.executable, "AutoModelForImageTextToText")]
    other = other_transformers_python()
    if other:  # the 4.x spelling where the other environment has it, else the 5.x one
        runs.append(("other", other, "AutoModelForVision2Seq" if _major_version(other) < 5 else "AutoModelForImageTextToText"))
    for name, python, auto_class in runs:
        run_dir = tmp_path / name
        run_dir.mkdir()
        script = SQLLAVA_SCRIPT.format(auto_class=auto_class, repo_id=repo_id)
        loaded = _load_in_fresh_process(fake_hub, run_dir, script, python=python, inputs=inputs)
        torch.testing.assert_close(loaded, expected, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"[{name}] {m}")
    assert fake_hub.unknown_routes == []
