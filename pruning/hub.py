"""Exports on the Hugging Face Hub: ``push`` an export folder to a model repo, ``snapshot`` one back.

The token comes from the usual places (``HF_TOKEN``, ``huggingface-cli login``) unless one is
given. Offline (``HF_HUB_OFFLINE=1``) a push fails at once with an error naming the repo, and a
download is served from the local cache only (or fails at once, naming the repo). Nothing that
could be unpickled or executed is downloaded (``IGNORED``).

>>> check_repo_id("user/name"), check_repo_id("not a repo")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pruning.errors.ExportError: 'not a repo' is not a Hub repo id ('user/name')
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import HfApi, snapshot_download

from .errors import ExportError
from .loading import hub_offline

_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
IGNORED = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle", "*.py", "*.msgpack", "*.h5"]


def check_repo_id(repo_id) -> str:
    """``repo_id`` when it is a ``user/name`` Hub id, else an ``ExportError`` naming it."""
    if not isinstance(repo_id, str) or not _REPO.match(repo_id) or ".." in repo_id or len(repo_id) > 96:
        raise ExportError(f"{repo_id!r} is not a Hub repo id ('user/name')")
    return repo_id


def check_reachable(repo_id: str, written: str | Path | None = None) -> None:
    """Fail fast before any work when the Hub cannot be reached (offline mode). ``written``: the
    export folder, when it is already written (the error then says where it is); before the
    export the error says that nothing was written.

    >>> import huggingface_hub.constants as hc; old = hc.HF_HUB_OFFLINE; hc.HF_HUB_OFFLINE = True
    >>> check_reachable("user/name")
    Traceback (most recent call last):
    ...
    pruning.errors.ExportError: cannot push to Hub repo 'user/name': the Hub is offline (HF_HUB_OFFLINE=1); nothing was exported: export without pushing, then upload the folder when online
    >>> hc.HF_HUB_OFFLINE = old
    """
    check_repo_id(repo_id)
    if hub_offline():
        then = (f"the export folder {str(written)!r} is written: upload it when online" if written is not None
                else "nothing was exported: export without pushing, then upload the folder when online")
        raise ExportError(f"cannot push to Hub repo {repo_id!r}: the Hub is offline (HF_HUB_OFFLINE=1); {then}")


def _api(token):
    """The Hub client (a seam for tests)."""
    return HfApi(token=token)


def push(folder: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
         message: str | None = None) -> str:
    """Upload an export folder to the model repo ``repo_id`` (created if missing); returns its URL."""
    folder = Path(folder)
    check_reachable(repo_id, written=folder)
    api = _api(token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                          commit_message=message or "Upload a pruned model (pruning export)",
                          ignore_patterns=[".*", *IGNORED])
    except Exception as e:  # HTTP errors, no token, connection refused: one line naming the repo
        msg = " ".join(str(e).split())[:300]
        raise ExportError(f"cannot push {str(folder)!r} to Hub repo {repo_id!r}: {type(e).__name__}: {msg}") from None
    return str(url)


def _snapshot(repo_id: str, **kw) -> str:
    """``snapshot_download`` (a seam for tests)."""
    return snapshot_download(repo_id, repo_type="model", ignore_patterns=IGNORED, **kw)


def snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The local folder of a Hub export repo (downloaded, or from the cache when offline)."""
    check_repo_id(repo_id)
    offline = hub_offline()
    try:
        return Path(_snapshot(repo_id, revision=revision, local_files_only=offline))
    except Exception as e:
        why = "the Hub is offline (HF_HUB_OFFLINE=1) and it is not in the local cache" if offline else \
            f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        raise ExportError(f"cannot download the pruned model {repo_id!r} from the Hub: {why}") from None


__all__ = ["push", "snapshot", "check_repo_id", "check_reachable", "IGNORED"]
