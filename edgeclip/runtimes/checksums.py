"""sha256 of bundle files, with a per-process cache that a rewrite of the file cannot fool.

The cache key is (device, inode, size, mtime_ns, ctime_ns) of the resolved path. Any write to a file
sets its ctime to the kernel's current time, and ctime cannot be set back from user space (``utime`` sets
atime and mtime, and itself moves ctime forward). A digest is only cached when the file's ctime is at
least ``SETTLE_NS`` older than the moment hashing began (git's "racy clean" rule): a later rewrite, even of
the same size within the same second and even on a filesystem with coarse timestamps, then carries a
newer ctime than the one stored, so its key differs and the file is hashed again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SETTLE_NS = 2_000_000_000


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a package folder (e.g. .mlpackage) over its sorted relative paths and contents."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode() + b"\0" + sha256_file(item).encode())
    return digest.hexdigest()


def _key(path: Path) -> tuple[int, ...]:
    """Identity and state of a file, or of every file in a package folder."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    key: list[int] = []
    for item in files:
        st = item.stat()
        key += [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    return tuple(key)


def _newest_ctime(key: tuple[int, ...]) -> int:
    return max(key[4::5], default=0)


class DigestCache:
    """sha256 of resolved paths, reused while a file's (device, inode, size, mtime_ns, ctime_ns) is unchanged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._digests: dict[str, tuple[tuple[int, ...], str]] = {}

    def digest(self, path: Path) -> str:
        """The sha256 of `path` (file or package folder), from the cache when the file cannot have changed."""
        name = str(path)
        before = _key(path)
        with self._lock:
            cached = self._digests.get(name)
        if cached is not None and cached[0] == before:
            return cached[1]
        started = time.time_ns()
        value = sha256_path(path)
        # Cache only when the file did not change while it was read and has settled (see the module docstring).
        if _key(path) == before and _newest_ctime(before) < started - SETTLE_NS:
            with self._lock:
                self._digests[name] = (before, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._digests.clear()


DIGESTS = DigestCache()


def umask_mode(default: int = 0o666) -> int:
    """The mode a plain `open()` would give a new file: `default` less the process umask."""
    try:  # Linux: read without changing it (os.umask would, for a moment, for every thread)
        with open("/proc/self/status", encoding="ascii") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
    return default & ~mask


@contextmanager
def atomic_output(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside `path` to write; renamed into place with the umask's mode if the block ends well.

    Readers never see half a file, and the result is shared like any file `open()` makes (mkstemp makes 0600).
    The temporary file is removed on any failure, KeyboardInterrupt included.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
