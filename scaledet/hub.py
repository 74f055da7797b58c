"""Download published checkpoints through torch.hub's cache, with the hash checked.

Nothing here unpickles anything: callers load the returned file with
:func:`scaledet.weights.load_checkpoint` (``weights_only=True``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlparse

import torch

from scaledet.errors import DownloadError


def cache_dir() -> Path:
    """Where downloaded checkpoints live: ``$TORCH_HOME/hub/checkpoints`` (torch.hub's cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_of(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_hash(path: Path, sha256_prefix: str | None, url: str) -> None:
    if not sha256_prefix:
        return
    actual = sha256_of(path)
    if not actual.startswith(sha256_prefix.lower()):
        raise DownloadError(
            f"{path} does not match the published hash for {url} (sha256 starts with "
            f"{actual[:len(sha256_prefix)]}, expected {sha256_prefix})\ndelete the file and download it again"
        )


def download_checkpoint(url: str, sha256_prefix: str | None = None, filename: str | None = None) -> Path:
    """Return the local path of ``url``'s file, downloading it into :func:`cache_dir` if needed.

    Args:
        url: http(s) or ``file://`` address of the checkpoint.
        sha256_prefix: leading hex digits of the file's sha256; checked on every call
            (a cached file that does not match raises, it is never silently used).
        filename: name in the cache (default: the URL's last path component).

    Raises:
        DownloadError (a RuntimeError and a :class:`~scaledet.errors.UserError`): the download
            failed (e.g. offline), in two lines: the URL, then the exact path where the file
            can be placed by hand; or the file does not match its hash.
    """
    filename = filename or os.path.basename(urlparse(url).path)
    target = cache_dir() / filename
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(target), hash_prefix=None, progress=True)
        except Exception as error:  # urllib raises several unrelated types when offline
            target.unlink(missing_ok=True)
            raise DownloadError(
                f"could not download {url} ({type(error).__name__}: {error})\n"
                f"offline? download it elsewhere and place it at {target}, or give the file's path instead of 'coco'"
            ) from error
    _check_hash(target, sha256_prefix, url)
    return target
