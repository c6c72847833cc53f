"""Push an exported SQ-LLaVA folder to the Hugging Face Hub as one commit.

    python -m hub_upload.push outputs/sqllava-7b-hf your-name/sqllava-7b --private --dry-run
    python -m hub_upload.push outputs/sqllava-7b-hf your-name/sqllava-7b --private

The token comes from the usual huggingface_hub sources: `token=`, then `HF_TOKEN`, then the cached `hf auth login`.

Why `create_commit` and not `upload_folder`: recent huggingface_hub versions route `upload_folder` through a pipelined
uploader that may split a large folder into several commits; building the operations here keeps the push to exactly
one atomic commit, and the dry run lists exactly the files that the real push sends.

Nothing leaves the folder that should not: only regular files inside it are uploaded, and a push (a dry run too)
is refused, before any request, when the folder holds a symbolic link, a secret (`.env`, `.netrc`, keys, token
files, `.git/`, a file holding a Hugging Face token, ...) or a pickle recognised by its content (whatever its name:
a pickle called `model.safetensors` is refused). The rules are in `hub_upload.safety`; a pickle you really mean to
publish is allowed by naming it: `--allow-pickle training_args.bin`.

Re-running a push is idempotent: huggingface_hub asks the Hub for the current version of every file (`preupload`) and
drops unchanged files from the commit; when nothing changed it makes no commit at all and the returned URL is that of
the current head commit.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .safety import Refusal, describe_refusals, pickle_reason, scan_folder

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload SQ-LLaVA model"


class UploadRefusedError(ValueError):
    """The folder holds files that must not be published (links, secrets, pickles); nothing was sent.

    `refusals` lists each one (`hub_upload.safety.Refusal`: path, reason, kind).
    """

    def __init__(self, folder, refusals: list[Refusal]):
        super().__init__(describe_refusals(folder, refusals))
        self.refusals = refusals


@dataclass(frozen=True)
class PlannedFile:
    """One file of a push: where it goes in the repo, its local path and its size in bytes."""

    path_in_repo: str
    local_path: Path
    size: int


def plan_upload(folder: str | os.PathLike, *, allow_pickle: Iterable[str] = ()) -> list[PlannedFile]:
    """List the files of `folder` that a push uploads, sorted by repo path, or refuse the whole push.

    What is refused, and why, is described in `hub_upload.safety`: symbolic links and other non-regular files,
    secrets (by name, and files holding a Hugging Face token), and pickles recognised by their content whatever their
    name. Caches (`.cache/`, `__pycache__/`, `*.pyc`) are left out silently.

    Args:
        folder: the exported model folder.
        allow_pickle: paths in the folder (posix, as in the repo, e.g. `"training_args.bin"`) of pickles to publish
            anyway. Each must name a pickle the folder holds; every other pickle is still refused.

    Raises:
        ValueError: if `folder` is not a directory, holds nothing to upload, or `allow_pickle` names a file that is
            not a pickle of the folder.
        TypeError: if `allow_pickle` is not a list of paths (e.g. `True`).
        UploadRefusedError (a `ValueError`): the folder holds files that must not be published; all are listed.
    """
    names = list(allow_pickle) if not isinstance(allow_pickle, (bool, str)) else None
    if names is None or not all(isinstance(name, str) for name in names):
        raise TypeError(
            f"allow_pickle={allow_pickle!r} must list the paths of the pickles to publish (e.g. "
            "['training_args.bin'], on the command line `--allow-pickle training_args.bin`), one per file."
        )
    allowed = {name.removeprefix("./") for name in names}
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"folder={str(folder)!r} is not a directory; pass the folder written by the exporter.")
    files, refusals = scan_folder(root)
    pickles = {item.path: reason for item in files if (reason := pickle_reason(item.local_path)) is not None}
    unknown = sorted(allowed - set(pickles))
    if unknown:
        raise ValueError(
            f"allow_pickle names {unknown}, which {'is' if len(unknown) == 1 else 'are'} not a pickle file of "
            f"{str(folder)!r} (pickles found: {sorted(pickles) or 'none'}); give paths relative to the folder."
        )
    refusals += [
        Refusal(path, f"{reason}: loading it runs code", "pickle")
        for path, reason in pickles.items()
        if path not in allowed
    ]
    if refusals:
        raise UploadRefusedError(folder, sorted(refusals, key=lambda r: r.path))
    for path in sorted(allowed):
        logger.warning("Publishing the pickle %s (allowed by name): whoever loads it runs its code.", path)
    planned = [PlannedFile(item.path, item.local_path, item.size) for item in files]
    if not planned:
        raise ValueError(f"folder={str(folder)!r} holds no file to upload.")
    return planned


def format_plan(planned: list[PlannedFile]) -> str:
    """Human-readable table of a plan: one `size  path` line per file and a total."""
    lines = [f"{_human_size(item.size):>10}  {item.path_in_repo}" for item in planned]
    lines.append(f"{_human_size(sum(item.size for item in planned)):>10}  total ({len(planned)} files)")
    return "\n".join(lines)


def _human_size(num_bytes: int) -> str:
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
    create_pr: bool = False,
    endpoint: str | None = None,
    allow_pickle: Iterable[str] = (),
    delete_missing: bool = False,
) -> str | list[PlannedFile]:
    """Create the repo if needed and upload `folder` to it in one commit.

    Args:
        folder: the exported model folder (see `hub_upload.export`).
        repo_id: `namespace/name` on the Hub.
        private: create the repo private. Ignored if the repo already exists (its visibility is left as is).
        revision: branch to commit to; created from `main` if it does not exist. `None` means `main`.
        commit_message: first line of the commit (default `"Upload SQ-LLaVA model"`).
        commit_description: longer commit description.
        token: Hub token; `None` uses `HF_TOKEN` or the cached login.
        dry_run: print the files that would be uploaded (paths and sizes) and return them, without any network call.
        create_pr: open a pull request (against `revision`, or `main`) instead of committing directly.
        endpoint: Hub endpoint (default `HF_ENDPOINT` or https://huggingface.co).
        allow_pickle: paths in `folder` of pickle files to publish anyway (each named; see `plan_upload`). Links,
            secrets and every other pickle are refused whatever this says (`UploadRefusedError`, before any request,
            in a dry run too).
        delete_missing: also delete files of the remote revision that are not in `folder` (except `.gitattributes`),
            e.g. stale weight shards of an earlier export with a different sharding.

    Returns:
        The URL of the commit (of the pull request when `create_pr`); when nothing changed, the URL of the current
        head commit (no new commit is made). With `dry_run`, the list of `PlannedFile`s.

    Example:

    >>> push_folder("outputs/sqllava-7b-hf", "your-name/sqllava-7b", dry_run=True)  # doctest: +SKIP
    """
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id={repo_id!r} must be 'namespace/name' (e.g. 'your-name/sqllava-7b').")
    if revision is not None and not revision.strip():
        raise ValueError(f"revision={revision!r} must be a branch name, or None for 'main'.")
    planned = plan_upload(folder, allow_pickle=allow_pickle)

    target = f"{repo_id}@{revision or 'main'}" + (" (as a pull request)" if create_pr else "")
    if dry_run:
        # No HfApi call at all: a dry run must work offline and without a token.
        visibility = "private" if private else "public"
        print(f"[dry run] would create {visibility} repo {repo_id} if missing and commit to {target}:")
        print(format_plan(planned))
        return planned

    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token

    if token is None and get_token() is None:
        raise ValueError(
            "No Hugging Face token found: pass token=..., set the HF_TOKEN environment variable, or run "
            "`hf auth login`; the token needs write access to the target namespace."
        )
    api = HfApi(endpoint=endpoint, token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    logger.info("Repo ready: %s", repo_url)
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")

    operations: list = [CommitOperationAdd(item.path_in_repo, str(item.local_path)) for item in planned]
    if delete_missing:
        local = {item.path_in_repo for item in planned} | {".gitattributes"}
        remote = api.list_repo_files(repo_id, revision=revision, repo_type="model")
        stale = sorted(set(remote) - local)
        if stale:
            logger.info("Deleting %d remote file(s) absent from %s: %s", len(stale), folder, stale)
        operations += [CommitOperationDelete(path) for path in stale]

    logger.info("Committing %d file(s) to %s", len(planned), target)
    commit = api.create_commit(
        repo_id,
        operations,
        commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
        commit_description=commit_description,
        revision=revision,
        create_pr=create_pr,
        repo_type="model",
    )
    url = commit.pr_url if create_pr and commit.pr_url else commit.commit_url
    logger.info("Pushed %s: %s", target, url)
    return url


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hub_upload.push",
        allow_abbrev=False,
        description="Upload an exported SQ-LLaVA folder to the Hugging Face Hub in one commit.",
    )
    parser.add_argument("folder", help="exported model folder")
    parser.add_argument("repo_id", help="target repo, namespace/name")
    parser.add_argument("--private", action="store_true", help="create the repo private (if it does not exist)")
    parser.add_argument("--revision", default=None, help="branch to commit to (created from main if missing)")
    parser.add_argument("--commit-message", default=None, help=f"default: {DEFAULT_COMMIT_MESSAGE!r}")
    parser.add_argument("--commit-description", default=None)
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--dry-run", action="store_true", help="print what would be uploaded; no network call")
    parser.add_argument(
        "--allow-pickle",
        action="append",
        default=[],
        metavar="PATH",
        help="publish this pickle file (path inside FOLDER) although pickles run code when loaded; repeat per file",
    )
    parser.add_argument("--delete-missing", action="store_true", help="delete remote files absent from FOLDER")
    parser.add_argument("--endpoint", default=None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = push_folder(
            args.folder,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            commit_description=args.commit_description,
            dry_run=args.dry_run,
            create_pr=args.create_pr,
            endpoint=args.endpoint,
            allow_pickle=args.allow_pickle,
            delete_missing=args.delete_missing,
        )
    except UploadRefusedError as error:
        # The refusal is the answer, not a crash: print it without a traceback (a dry run shows it the same way).
        print(("[dry run] " if args.dry_run else "") + str(error), file=sys.stderr)
        raise SystemExit(1) from None
    if not args.dry_run:
        print(result)


if __name__ == "__main__":
    main()
