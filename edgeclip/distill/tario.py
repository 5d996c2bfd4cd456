"""Webdataset tar files at the byte level: shard patterns, a random-access member index, deterministic writing.

The `webdataset` library streams samples; reinforced training needs random access (a global shuffle that
resumes at an exact position) and a count of what was corrupt, so shards are indexed here with `tarfile`
and members are read by offset. What is written is a plain POSIX tar with webdataset's naming
(`<key>.<ext>`, one sample's members adjacent), so webdataset, img2dataset and Apple's tools read it.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edgeclip.errors import DatasetError

_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_CHOICE = re.compile(r"\{([^{}]*,[^{}]*)\}")


MAX_PATTERN_PATHS = 1_000_000


def pattern_count(pattern: str) -> int:
    """How many paths a brace pattern names, counted without expanding it."""
    count = 1
    for match in _RANGE.finditer(pattern):
        if max(len(match.group(1)), len(match.group(2))) > 18:  # beyond any real shard count (and int() limits)
            return MAX_PATTERN_PATHS + 1
        count *= max(int(match.group(2)) - int(match.group(1)) + 1, 1)
    for match in _CHOICE.finditer(_RANGE.sub("", pattern)):
        count *= len(match.group(1).split(","))
    return count


def check_pattern(pattern: str) -> None:
    """Refuse a brace pattern naming more than MAX_PATTERN_PATHS files, cheaply: callers check before slow work."""
    if pattern_count(pattern) > MAX_PATTERN_PATHS:
        shown = pattern if len(pattern) <= 80 else pattern[:77] + "..."
        raise DatasetError(
            f"shard pattern {shown!r} names more than {MAX_PATTERN_PATHS:,} files: expected at most that many "
            "(check the braces)"
        )


def expand_pattern(pattern: str) -> list[str]:
    """Brace-expand a shard pattern, leftmost group first as a shell does: `s/{00000..00099}.tar`, `{a,b}.tar`."""
    check_pattern(pattern)
    return _expand(pattern)


def _expand(pattern: str) -> list[str]:
    found = [m for m in (_RANGE.search(pattern), _CHOICE.search(pattern)) if m]
    if not found:
        return [pattern]
    match = min(found, key=lambda m: m.start())
    head, tail = pattern[: match.start()], pattern[match.end() :]
    if match.re is _CHOICE:
        return [p for choice in match.group(1).split(",") for p in _expand(head + choice + tail)]
    first, last = match.group(1), match.group(2)
    if int(last) < int(first):
        raise DatasetError(f"shard pattern {pattern!r}: range {{{first}..{last}}} runs backwards")
    width = len(first) if first.startswith("0") else 0
    return [p for n in range(int(first), int(last) + 1) for p in _expand(f"{head}{n:0{width}d}{tail}")]


def shard_paths(spec: str | Path) -> list[Path]:
    """The tar files a spec names: a folder (its *.tar, sorted), one .tar file, or a brace pattern."""
    spec = str(spec)
    path = Path(spec)
    if path.is_dir():
        found = sorted(path.glob("*.tar"))
        if not found:
            raise DatasetError(f"{spec}: folder holds no .tar shards")
        return found
    paths = [Path(p) for p in expand_pattern(spec)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        first = ", ".join(str(p) for p in missing[:3])
        raise DatasetError(f"{spec}: {len(missing)} of {len(paths)} shard files do not exist (first: {first})")
    return paths


@dataclass(frozen=True)
class Member:
    """Where one member's bytes lie inside its tar file."""

    offset: int
    size: int


@dataclass(frozen=True)
class TarSample:
    """One webdataset sample: its key and its members by extension (`jpg`, `txt`, `npz`, `paug.json`…)."""

    key: str
    members: dict[str, Member]


def split_name(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the basename, the extension the rest."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext if dot else "")


def index_tar(path: Path) -> tuple[list[TarSample], str | None]:
    """Samples of a tar file in order, and why reading stopped early (a truncated or corrupt tail), if it did."""
    samples: list[TarSample] = []
    error = None
    try:
        with tarfile.open(path, "r:") as tar:
            current: TarSample | None = None
            while True:
                try:
                    info = tar.next()
                except (tarfile.TarError, OSError, EOFError) as e:
                    error = f"{type(e).__name__}: {' '.join(str(e).split()) or 'corrupt header'}"
                    break
                if info is None:
                    error = _end_problem(tar)
                    break
                if not info.isfile():
                    continue
                key, ext = split_name(info.name)
                if current is None or current.key != key:
                    current = TarSample(key, {})
                    samples.append(current)
                current.members[ext] = Member(info.offset_data, info.size)
    except (tarfile.TarError, OSError, EOFError) as e:
        return [], f"{type(e).__name__}: {' '.join(str(e).split()) or 'not a tar file'}"
    size = path.stat().st_size
    truncated = [s for s in samples if any(m.offset + m.size > size for m in s.members.values())]
    if truncated:
        samples = [s for s in samples if s not in truncated]
        error = error or f"truncated: {len(truncated)} sample(s) run past the end of the file"
    return samples, error


def _end_problem(tar: tarfile.TarFile) -> str | None:
    """Why reading stopped where `tarfile` saw no further member, unless it is a real end-of-archive block.

    `tarfile` ends quietly at a header cut short or missing (a file truncated at a block boundary) and at an
    invalid header; only a zero block is the end a writer leaves, so anything else means lost members.
    """
    if tar.fileobj is None:
        return None
    tar.fileobj.seek(tar.offset)
    block = tar.fileobj.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE:
        return f"truncated: the file ends at byte {tar.offset + len(block)} with no end-of-archive marker"
    if block.count(0) != tarfile.BLOCKSIZE:
        return f"corrupt header at byte {tar.offset}: members after it cannot be read"
    return None


class TarReader:
    """Reads members by offset, keeping a few files open (one per shard in use)."""

    def __init__(self, max_open: int = 8) -> None:
        self._files: dict[Path, io.BufferedReader] = {}
        self._max_open = max_open

    def read(self, path: Path, member: Member) -> bytes:
        f = self._files.get(path)
        if f is None:
            if len(self._files) >= self._max_open:
                self._files.pop(next(iter(self._files))).close()
            f = self._files[path] = open(path, "rb")  # noqa: SIM115 - kept open across reads, closed in close()
        f.seek(member.offset)
        data = f.read(member.size)
        if len(data) != member.size:
            raise DatasetError(f"{path}: member at byte {member.offset} is cut short ({len(data)} of {member.size})")
        return data

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __del__(self) -> None:
        self.close()


def write_tar(
    path: Path,
    samples: Iterable[tuple[str, dict[str, bytes]]],
    before_publish: Callable[[int], None] | None = None,
) -> int:
    """Write samples as `<key>.<ext>` members to `path` through a temporary file; returns the bytes written.

    Headers are fixed (mtime 0, root owner, mode 0644), so the same samples always give the same bytes.
    `before_publish(size)` runs once the temporary file is whole, before it is renamed into place. The temporary
    name is unique across machines (jobs on several nodes may share the folder and a process id).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, members in samples:
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    info.mode = 0o644
                    info.uname = info.gname = "root"
                    tar.addfile(info, io.BytesIO(data))
        if before_publish is not None:
            before_publish(tmp.stat().st_size)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path.stat().st_size


def iter_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """Every regular member's name and bytes, in order (for tools and tests)."""
    with tarfile.open(path, "r:") as tar:
        for info in tar:
            if info.isfile():
                f = tar.extractfile(info)
                yield info.name, f.read() if f else b""
