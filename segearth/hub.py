"""A model by name: a built-in one, a local folder, or a Hugging Face hub repository.

What ``--model`` (and the server's model setting) accepts, in the order it is tried:

* nothing: the built-in default, segearth-nano;
* a built-in name: ``nano`` or ``segearth-nano``;
* an existing path: that checkpoint folder (a local path always wins over a hub id);
* ``org/name[@revision]``: a hub repository, e.g. ``earth-insights/SegEarth-R1-EarthReason``,
  downloaded once by ``huggingface_hub`` into its standard cache (``HF_HUB_CACHE`` / ``HF_HOME``),
  with its own progress bar. Only the files a checkpoint needs are fetched: config, safetensors
  weights, tokenizer files, nothing in subfolders and never pickled ``*.bin`` weights unless the
  repository has no safetensors and the caller allows them. With ``HF_HUB_OFFLINE=1`` only the
  cache is used.
"""

from __future__ import annotations

import re
from fnmatch import fnmatch
from pathlib import Path

from .checkpoint_io import CheckpointError
from .errors import ModelNotFoundError
from .weights import BUILTIN_NAMES, DEFAULT_MODEL, builtin_model_path

CHECKPOINT_FILES = (
    "config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab*", "merges.txt",
)  # fmt: skip
BIN_FILES = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
# fnmatch's "*" also matches "/": this keeps checkpoints saved in subfolders (training steps, other formats) out.
_SUBFOLDERS = ["*/*"]
_HUB_ID = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")


def resolve_model(spec: str | Path | None = None, revision: str | None = None, *, allow_bin: bool = False) -> Path:
    """The checkpoint folder that ``spec`` names (see the module docstring), downloading it if needed.

    Args:
        spec: None, a built-in name, a folder, or a hub id ``org/name[@revision]``.
        revision: a hub branch, tag or commit (same as ``@revision`` in ``spec``).
        allow_bin: for a hub repository without safetensors, download its ``pytorch_model*.bin``.
    """
    if spec is None:
        if revision:
            raise ModelNotFoundError(f"revision {revision!r} given without a hub id (org/name)")
        return builtin_model_path(DEFAULT_MODEL)
    text = str(spec)
    if text in BUILTIN_NAMES:
        return builtin_model_path(text)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"model {text}: a file; pass the checkpoint folder that holds it")
        return path
    hub = parse_hub_id(text)
    if hub is None:
        raise ModelNotFoundError(
            f"model {text!r} does not exist: it is not a folder, a built-in name ({', '.join(BUILTIN_NAMES)}) "
            "or a hub id (org/name[@revision])"
        )
    repo, pinned = hub
    if revision and pinned and revision != pinned:
        raise ModelNotFoundError(f"model {text}: two revisions given ({pinned!r} and {revision!r})")
    return download_model(repo, pinned or revision, allow_bin=allow_bin)


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """``"org/name@rev"`` -> ``("org/name", "rev")``; None when ``text`` is not a valid hub id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    m = _HUB_ID.match(text)
    if m is None:
        return None
    try:
        validate_repo_id(m["repo"])
    except HFValidationError:
        return None
    return m["repo"], m["revision"]


def download_model(repo_id: str, revision: str | None = None, *, allow_bin: bool = False) -> Path:
    """Snapshot folder of a hub checkpoint in the Hugging Face cache (downloaded unless cached)."""
    label = f"{repo_id}@{revision}" if revision else repo_id
    folder = _snapshot(repo_id, revision, CHECKPOINT_FILES, label)
    if any(folder.glob("*.safetensors")):
        return folder
    listed = _listed_files(repo_id, folder)
    if not any(fnmatch(f, "pytorch_model*.bin") for f in listed) and not any(folder.glob("pytorch_model*.bin")):
        raise CheckpointError(f"model {label}: no *.safetensors or pytorch_model*.bin weights in {folder}")
    if not allow_bin:
        raise CheckpointError(
            f"model {label} has only pytorch_model*.bin weights (pickles, not downloaded); allow them explicitly "
            "(allow_bin=True) or use a safetensors copy of the checkpoint"
        )
    return _snapshot(repo_id, revision, CHECKPOINT_FILES + BIN_FILES, label)


def _snapshot(repo_id: str, revision: str | None, patterns: tuple[str, ...], label: str) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(
            snapshot_download(repo_id, revision=revision, allow_patterns=list(patterns), ignore_patterns=_SUBFOLDERS)
        )
    except LocalEntryNotFoundError as exc:  # offline or unreachable, and not (completely) cached
        where = "only partly in" if isinstance(exc, IncompleteSnapshotError) else "not in"
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hugging Face Hub cannot be reached"
        raise ModelNotFoundError(
            f"model {label} is {where} the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}: "
            "connect once to download it, or pass a local checkpoint folder"
        ) from None
    except GatedRepoError:
        raise ModelNotFoundError(
            f"model {label} is gated on the Hugging Face Hub: accept its terms there and log in (`hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"model {label}: no such folder here and no repository {repo_id} on the Hugging Face Hub "
            "(a private one needs `hf auth login`)"
        ) from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"model {label}: {repo_id} has no revision {revision!r}") from None
    except HfHubHTTPError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(f"model {label}: download failed: {first}") from None


def _listed_files(repo_id: str, snapshot: Path) -> list[str]:
    """Every file of the repository at the snapshot's commit, from the listing cached by the download
    (empty when none is cached, e.g. a cache copied from elsewhere)."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        return [f.path for f in get_cached_repo_tree(repo_id, revision=snapshot.name)]
    except CachedRepoTreeNotFoundError:
        return []
