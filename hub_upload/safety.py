"""What may leave a folder for the Hub: regular files inside it, no secrets, no pickles (recognised by content).

`hub_upload.push` publishes a folder with the user's token, and whoever downloads the repo may load every file in it.
`scan_folder` decides, before anything is sent, which files go up and which are refused, each refusal with its reason:

- **Links and special files.** Only regular files are uploaded. A symbolic link (to a file or a folder, pointing
  inside the folder or out of it) is refused by name with its target: `leak.txt -> /etc/passwd` would otherwise
  publish `/etc/passwd`. FIFOs, sockets and devices are refused too. Hard links cannot be told from regular files
  and are not detected.
- **Secrets**, by name (case-insensitive, at any depth; the lists below): `.env` files, `.netrc`, git and package
  manager credentials, private keys and certificates, SSH keys, Hugging Face token files, and whole folders that hold
  credentials (`.git/`, `.huggingface/`, `.ssh/`, ...). And by content: any file up to `SECRET_SCAN_LIMIT` bytes
  holding a Hugging Face access token (`hf_` + 34 letters and digits).
- **Pickles**, by content, whatever the file is called (`pickle_reason`): Python's pickle runs code while loading,
  so a pickle named `model.safetensors` is as dangerous as one named `model.pkl`. Recognised: raw pickle streams of
  every protocol (`pickle`, legacy `torch.save`, `joblib.dump`), the same compressed with gzip, zlib, bz2, xz or lzma
  (`joblib.dump(..., compress=...)`; lz4 frames, which the standard library cannot open, are refused as possible
  pickles), zip archives holding a `*.pkl` member or a pickled member (`torch.save`'s format, `.npz`), and NumPy
  `.npy` arrays with an object dtype (which `np.load(allow_pickle=True)` unpickles). A file that parses as a valid
  safetensors file is never a pickle. Nothing is ever unpickled: the check reads opcodes with `pickletools`.

Ignored without a word (caches, never part of a model): `.cache/`, `__pycache__/`, `.ipynb_checkpoints/`, `*.pyc`,
`*.pyo`.
"""

from __future__ import annotations

import bz2
import fnmatch
import json
import lzma
import os
import pickletools
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

# File names (lower-cased, matched with fnmatch) that hold credentials. Chosen to catch what ends up in a working
# folder by accident, without refusing any file a transformers model repo legitimately has (`tokenizer.json`,
# `special_tokens_map.json`, `tokenizer.model` and the like match none of them).
SECRET_FILE_PATTERNS: dict[str, str] = {
    ".env": "an environment file (usually holds tokens and passwords)",
    ".env.*": "an environment file (usually holds tokens and passwords)",
    "*.env": "an environment file (usually holds tokens and passwords)",
    ".envrc": "a direnv environment file (usually holds tokens)",
    ".netrc": "a .netrc file (login credentials)",
    "_netrc": "a .netrc file (login credentials)",
    ".git-credentials": "git's stored credentials",
    ".pypirc": "PyPI upload credentials",
    ".npmrc": "npm credentials",
    "credentials": "a credentials file (AWS and others)",
    "credentials.json": "a credentials file (cloud service account)",
    "*.pem": "a PEM key or certificate",
    "*.key": "a private key",
    "*.p12": "a PKCS#12 key bundle",
    "*.pfx": "a PKCS#12 key bundle",
    "*.jks": "a Java keystore",
    "*.keystore": "a keystore",
    "id_rsa*": "an SSH key",
    "id_dsa*": "an SSH key",
    "id_ecdsa*": "an SSH key",
    "id_ed25519*": "an SSH key",
    "token": "a token file (huggingface_hub stores the login token under this name)",
    "stored_tokens": "huggingface_hub's stored tokens",
    "*.token": "a token file",
    "hf_token*": "a token file",
}
# Folders whose whole content is refused: each holds credentials or the history of a repository.
SECRET_DIR_NAMES: dict[str, str] = {
    ".git": "a git folder (its config can hold credentials, its history deleted files)",
    ".huggingface": "huggingface_hub's local folder (tokens, upload state)",
    ".ssh": "SSH keys",
    ".aws": "AWS credentials",
    ".gnupg": "GnuPG keys",
    ".docker": "Docker credentials",
    ".kube": "Kubernetes credentials",
}
IGNORED_DIRS = frozenset({".cache", "__pycache__", ".ipynb_checkpoints"})
IGNORED_SUFFIXES = (".pyc", ".pyo")
# A Hugging Face user access token.
HF_TOKEN_PATTERN = re.compile(rb"(?<![A-Za-z0-9_])hf_[A-Za-z0-9]{34,}(?![A-Za-z0-9])")
SECRET_SCAN_LIMIT = 16 * 1024 * 1024
# Bytes of a file (or of a zip member, or decompressed) that the pickle check reads.
PICKLE_SCAN_BYTES = 1024 * 1024
_MAX_ZIP_MEMBERS = 100_000


@dataclass(frozen=True)
class Refusal:
    """A file (or folder) that must not be uploaded: its path in the folder and why."""

    path: str
    reason: str
    kind: str  # "link", "special", "secret" or "pickle"


@dataclass(frozen=True)
class ScannedFile:
    """A regular file of the folder: its posix path in the folder, its path on disk, its size in bytes."""

    path: str
    local_path: Path
    size: int


def secret_reason(relative_path: str) -> str | None:
    """Why the file at `relative_path` (posix, relative to the folder) is a secret by its name, or `None`."""
    parts = relative_path.lower().split("/")
    for part in parts[:-1]:
        if part in SECRET_DIR_NAMES:
            return f"inside {part}/: {SECRET_DIR_NAMES[part]}"
    name = parts[-1]
    for pattern, reason in SECRET_FILE_PATTERNS.items():
        if fnmatch.fnmatchcase(name, pattern):
            return reason
    return None


def token_in_file(path: str | os.PathLike, size: int) -> bool:
    """Whether the file holds a Hugging Face access token (files larger than `SECRET_SCAN_LIMIT` are not read)."""
    if size > SECRET_SCAN_LIMIT:
        return False
    with open(path, "rb") as handle:
        return HF_TOKEN_PATTERN.search(handle.read()) is not None


def scan_folder(folder: str | os.PathLike, *, secrets: bool = True) -> tuple[list[ScannedFile], list[Refusal]]:
    """Walk `folder` without following links: `(regular files that may be uploaded, refusals)`, both sorted by path.

    Pickles are not looked for here (see `find_pickles`), so that a caller can allow some of them by name.

    Args:
        folder: the folder to publish.
        secrets: also refuse secrets (by name, and files holding a Hugging Face token).
    """
    root = Path(folder).resolve()
    files: list[ScannedFile] = []
    refusals: list[Refusal] = []

    def walk(directory: Path, prefix: str) -> None:
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                relative = f"{prefix}{entry.name}"
                if entry.is_symlink():
                    target = os.readlink(entry.path)
                    where = "inside" if _inside(root, Path(directory, target)) else "outside"
                    reason = f"a symbolic link (-> {target}, {where} the folder); only regular files are uploaded"
                    refusals.append(Refusal(relative, reason, "link"))
                    continue
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    if entry.name in IGNORED_DIRS:
                        continue
                    if secrets and entry.name.lower() in SECRET_DIR_NAMES:
                        refusals.append(Refusal(relative + "/", SECRET_DIR_NAMES[entry.name.lower()], "secret"))
                        continue
                    walk(Path(entry.path), relative + "/")
                elif not stat.S_ISREG(mode):
                    refusals.append(Refusal(relative, "not a regular file (a FIFO, socket or device)", "special"))
                elif not entry.name.endswith(IGNORED_SUFFIXES):
                    files.append(ScannedFile(relative, Path(entry.path), entry.stat(follow_symlinks=False).st_size))

    walk(root, "")
    kept = []
    for item in files:
        # Belt and braces: nothing reached without following a link can resolve outside the folder.
        if not _inside(root, item.local_path):
            refusals.append(Refusal(item.path, "resolves outside the folder", "link"))
        elif secrets and (reason := secret_reason(item.path)) is not None:
            refusals.append(Refusal(item.path, reason, "secret"))
        elif not os.access(item.local_path, os.R_OK):
            refusals.append(Refusal(item.path, "cannot be read (permission denied)", "special"))
        elif secrets and token_in_file(item.local_path, item.size):
            refusals.append(Refusal(item.path, "holds a Hugging Face access token (hf_...)", "secret"))
        else:
            kept.append(item)
    return kept, sorted(refusals, key=lambda r: r.path)


def _inside(root: Path, path: Path) -> bool:
    resolved = Path(os.path.realpath(path))
    return resolved == root or root in resolved.parents


def find_pickles(folder: str | os.PathLike) -> list[tuple[str, str]]:
    """`(posix path, reason)` of every regular file under `folder` whose content is a pickle (links not followed)."""
    files, _ = scan_folder(folder, secrets=False)
    return [(item.path, reason) for item in files if (reason := pickle_reason(item.local_path)) is not None]


# --------------------------------------------------------------------------------------------------------------------
# Pickle detection by content
# --------------------------------------------------------------------------------------------------------------------


def pickle_reason(path: str | os.PathLike) -> str | None:
    """Why the file at `path` is (or may be) a pickle, judged by its bytes only; `None` when it is not one.

    Nothing is unpickled: opcodes are read with `pickletools.genops` (at most `PICKLE_SCAN_BYTES` of a stream), zip
    archives are listed, compressed streams are decompressed as they are read.

    Example:

    >>> import pickle, tempfile
    >>> with tempfile.NamedTemporaryFile(suffix=".safetensors", delete=False) as handle:
    ...     _ = handle.write(pickle.dumps({"weights": [1.0]}))
    >>> pickle_reason(handle.name)
    'a pickle stream (protocol 4)'
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(64 * 1024)
        if _is_safetensors(head, size, handle):
            return None
        if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            try:
                with zipfile.ZipFile(handle) as archive:
                    return _zip_reason(archive)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError):
                pass  # not a readable archive: judged on its bytes below
        handle.seek(0)
        return _stream_reason(_Reader(handle.read), compressed_ok=True)


def _stream_reason(reader: _Reader, *, compressed_ok: bool) -> str | None:
    """The verdict on a stream (a file, a zip member, decompressed data)."""
    head = reader.peek(16)
    if head.startswith(b"\x93NUMPY"):
        return _npy_reason(reader.peek(PICKLE_SCAN_BYTES))
    if compressed_ok:
        decompressed = _decompressing_reader(head, reader)
        if decompressed is not None:
            kind, inner = decompressed
            if inner is None:
                return f"{kind}-compressed data, which this check cannot open (joblib stores pickles this way)"
            try:
                reason = _stream_reason(inner, compressed_ok=False)
            except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError):
                return None  # the magic bytes were a coincidence: not a stream of that format, not a pickle
            return None if reason is None else f"{reason}, compressed with {kind}"
    protocol = _pickle_protocol(reader)
    return None if protocol is None else f"a pickle stream ({protocol})"


def _zip_reason(archive: zipfile.ZipFile) -> str | None:
    members = archive.infolist()
    if len(members) > _MAX_ZIP_MEMBERS:
        return f"a zip archive with {len(members)} members, too many to inspect"
    for member in members:
        if member.is_dir():
            continue
        if member.filename.lower().endswith((".pkl", ".pickle")):
            return f"a zip archive holding {member.filename} (the torch.save format)"
        with archive.open(member) as handle:
            reason = _stream_reason(_Reader(handle.read), compressed_ok=True)
        if reason is not None:
            return f"a zip archive whose member {member.filename} is {reason}"
    return None


class _EndOfWindow(Exception):
    """The opcode parser needs more than `PICKLE_SCAN_BYTES` of the stream."""


class _Reader:
    """`read`/`readline`/`peek` over a `read(n)` function, with a budget of `PICKLE_SCAN_BYTES` consumed bytes.

    Going past the budget raises `_EndOfWindow`; at the true end of the stream reads come back short, as from a file.
    """

    def __init__(self, read, budget: int = PICKLE_SCAN_BYTES):
        self._read, self._budget = read, budget
        self._buffer = bytearray()
        self._consumed = 0
        self._eof = False

    def _fill(self, size: int) -> None:
        while len(self._buffer) < size and not self._eof:
            chunk = self._read(max(size - len(self._buffer), 64 * 1024))
            if not chunk:
                self._eof = True
            self._buffer += chunk

    def read_raw(self, size: int) -> bytes:
        """The next bytes of the underlying stream, outside the budget (the input of a decompressor)."""
        self._fill(size)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def peek(self, size: int) -> bytes:
        self._fill(size)
        return bytes(self._buffer[:size])

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or self._consumed + size > self._budget:
            raise _EndOfWindow
        self._fill(size)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._consumed += len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        limit = self._budget - self._consumed
        scanned = 0
        while True:
            newline = self._buffer.find(b"\n", scanned)
            if newline >= 0:
                return self.read(newline + 1)
            if len(self._buffer) >= limit:
                raise _EndOfWindow
            if self._eof:
                return self.read(len(self._buffer))
            scanned = len(self._buffer)
            self._fill(len(self._buffer) + 64 * 1024)


def _pickle_protocol(reader: _Reader) -> str | None:
    """`"protocol N"` when the stream is a pickle, else `None`.

    A stream is a pickle when its opcodes parse up to a STOP (after at least one other opcode). One whose opcodes
    all parse until `PICKLE_SCAN_BYTES` are used up counts as a pickle too (at least two opcodes read): padding a
    payload with a huge first string must not hide it.
    """
    protocol, count = 0, 0
    try:
        for opcode, argument, _ in pickletools.genops(reader):
            if opcode.name == "PROTO":
                protocol = argument
            if opcode.name == "STOP":
                return _protocol_label(protocol) if count else None
            count += 1
    except _EndOfWindow:
        return _protocol_label(protocol) if count >= 2 else None
    except Exception:  # noqa: BLE001 - any parse error means "not a pickle stream"
        return None
    return None


def _protocol_label(protocol: int) -> str:
    # Protocols 0 and 1 have no header opcode.
    return f"protocol {protocol}" if protocol >= 2 else "protocol 0 or 1"


def _decompressing_reader(head: bytes, reader: _Reader) -> tuple[str, _Reader | None] | None:
    """`(format, reader of the decompressed stream)` when `head` opens a compressed stream, else `None`.

    The formats `joblib.dump(..., compress=...)` writes; lz4 (not in the standard library) gives `(format, None)`.
    """
    if head.startswith(b"\x04\x22\x4d\x18"):
        return "lz4", None
    if head.startswith(b"\x1f\x8b"):
        kind, decompressor = "gzip", zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:
        kind, decompressor = "zlib", zlib.decompressobj()
    elif head.startswith(b"BZh"):
        kind, decompressor = "bz2", bz2.BZ2Decompressor()
    elif head.startswith(b"\xfd7zXZ\x00"):
        kind, decompressor = "xz", lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    elif head.startswith(b"\x5d\x00\x00"):
        kind, decompressor = "lzma", lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)
    else:
        return None
    pending = b""

    def read(size: int) -> bytes:
        nonlocal pending
        out = bytearray()
        while len(out) < size and not decompressor.eof:
            # bz2/lzma keep unused input inside (`needs_input` False); zlib hands it back in `unconsumed_tail`.
            if getattr(decompressor, "needs_input", not pending) and not pending:
                pending = reader.read_raw(64 * 1024)
                if not pending:
                    break
            out += decompressor.decompress(pending, size - len(out))
            pending = getattr(decompressor, "unconsumed_tail", b"")
        return bytes(out)

    return kind, _Reader(read)


def _npy_reason(head: bytes) -> str | None:
    """Why a `.npy` stream is a pickle (its header declares Python objects), else `None`."""
    import ast

    try:
        major = head[6]
        if major == 1:
            length, start = int.from_bytes(head[8:10], "little"), 10
        else:
            length, start = int.from_bytes(head[8:12], "little"), 12
        header = ast.literal_eval(head[start : start + length].decode("latin1" if major < 3 else "utf8"))
        descr = header["descr"]
    except Exception:  # noqa: BLE001 - an unreadable header cannot be loaded either
        return None
    return "a NumPy array with an object dtype (np.load unpickles it)" if _descr_has_object(descr) else None


def _descr_has_object(descr) -> bool:
    if isinstance(descr, str):
        return descr.lstrip("<>|=").startswith("O")
    if isinstance(descr, (list, tuple)):
        return any(_descr_has_object(part) for part in descr)
    return False


def _is_safetensors(head: bytes, size: int, handle) -> bool:
    """Whether the file is a well-formed safetensors file: header length, JSON header, offsets covering the file."""
    if len(head) < 10:
        return False
    length = int.from_bytes(head[:8], "little")
    if length < 2 or 8 + length > size or length > 100 * 1024 * 1024:
        return False
    if 8 + length <= len(head):
        raw = head[8 : 8 + length]
    else:
        handle.seek(8)
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return False
    if not isinstance(header, dict):
        return False
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return False
        end = max(end, offsets[1])
    return 8 + length + end == size


def describe_refusals(folder: str | os.PathLike, refusals: list[Refusal]) -> str:
    """The message listing every refused file, with what to do about each kind."""
    lines = [f"Refusing to upload {str(folder)!r}: {len(refusals)} file(s) must not be published; nothing was sent."]
    lines += [f"  {refusal.path}: {refusal.reason}" for refusal in refusals]
    kinds = {refusal.kind for refusal in refusals}
    if kinds & {"link", "special"}:
        lines.append("Links and special files: replace a link by a copy of the file it points to, or remove it.")
    if "secret" in kinds:
        lines.append("Secrets: move these files out of the folder (push a folder that holds only the model).")
    if "pickle" in kinds:
        examples = " ".join(f"--allow-pickle {r.path}" for r in refusals if r.kind == "pickle")
        lines.append(
            "Pickles run code on whoever loads them: save tensors with safetensors instead. To publish one anyway, "
            f"name each: {examples} (allow_pickle=[...])."
        )
    return "\n".join(lines)


__all__ = [
    "HF_TOKEN_PATTERN",
    "IGNORED_DIRS",
    "SECRET_DIR_NAMES",
    "SECRET_FILE_PATTERNS",
    "Refusal",
    "ScannedFile",
    "describe_refusals",
    "find_pickles",
    "pickle_reason",
    "scan_folder",
    "secret_reason",
]
