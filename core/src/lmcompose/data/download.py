"""Downloads of edit-dataset files: a URL's place in the download cache, an optional
``#sha256=`` checksum, and a download that is verified before it is cached."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from pathlib import Path

from lmcompose.data.files import sha256_file
from lmcompose.errors import DataError
from lmcompose.results import follow_umask

__all__ = ["DOWNLOAD_TIMEOUT_S", "download_cache_path", "fetch", "split_checksum"]

DOWNLOAD_TIMEOUT_S = 30


def split_checksum(source: str) -> tuple[str, str | None]:
    """``URL#sha256=HEX`` as (URL, hex); a source without the fragment as (source, None)."""
    url, sep, fragment = source.partition("#")
    if not sep:
        return source, None
    key, eq, value = fragment.partition("=")
    value = value.strip().lower()
    if key.strip().lower() != "sha256" or not eq or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise DataError(f"{source}: the part after '#' must be sha256=<64 hex digits>, the file's SHA-256")
    return url, value


def download_cache_path(folder: Path, url: str) -> Path:
    """Where ``url`` is cached: keyed by the whole URL (two URLs with the same file name are
    two entries), with the file name kept readable."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = Path(url.split("?")[0].split("#")[0]).name or "download"
    return folder / f"{digest}-{name}"


def fetch(url: str, target: Path, sha256: str | None = None) -> Path:
    """Download ``url`` to ``target`` once. A body shorter than the server's Content-Length,
    or whose checksum is not ``sha256`` (when given), is refused and never cached; the
    checksum of what was cached is recorded beside it (``<name>.sha256``), so a later load
    detects a changed copy and says how to clear it."""
    sidecar = target.with_name(target.name + ".sha256")
    clear = f"delete {target} and {sidecar.name} beside it to download it again"
    if target.exists():
        want = sha256 or (sidecar.read_text().split()[0] if sidecar.exists() else None)
        if want is None:
            raise DataError(f"cached file {target} has no recorded checksum (an interrupted download?); {clear}")
        if sha256_file(target) == want:
            return target
        raise DataError(f"cached file {target} does not match its checksum {want}; {clear}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".download-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            expected = resp.headers.get("Content-Length")
            got_bytes = 0
            while True:
                try:
                    block = resp.read(1 << 20)
                except http.client.IncompleteRead as exc:
                    got_bytes += len(exc.partial)
                    break
                if not block:
                    break
                out.write(block)
                got_bytes += len(block)
        if expected is not None and expected.isdigit() and got_bytes != int(expected):
            raise DataError(
                f"download of {url} stopped after {got_bytes:,} of {int(expected):,} bytes; nothing was "
                "cached: try again, or pass a local file as the source"
            )
        got = sha256_file(Path(tmp))
        if sha256 is not None and got != sha256:
            raise DataError(f"download of {url} has sha256 {got}, expected {sha256}; nothing was cached")
        follow_umask(Path(tmp))  # mkstemp makes it 0600 whatever the umask
        os.replace(tmp, target)
        sidecar.write_text(f"{got}  {target.name}\n")
    except (OSError, http.client.HTTPException) as exc:
        raise DataError(
            f"could not download {url}: {exc}. Pass a local file as the source, or set LMCOMPOSE_DATA_DIR"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
