"""The `auto` backend choice: among installed backends able to run a bundle's files, the fastest by a short probe.

Candidates are (backend, precision hint) pairs: every backend that runs the bundle's target, with each hint it
takes (OpenVINO: f32 and bf16; ONNX Runtime: the file's own precision). A user who asks for exact arithmetic
(`precision_hint="f32"`) gets only exact candidates. The probe times both encoders at batch 1, interleaved, and
the result is cached per bundle and machine under the user's cache folder (never in the bundle): the key holds
the bundle's checksums, the CPU's flags, each backend's version, the threads and the hint asked, so a change to
any of them probes again. The rule and its measurements: docs/openvino.md#auto.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import EdgeclipError
from edgeclip.runtimes.backends import Backend, BackendInfo, RuntimeOptions, backends_for_target
from edgeclip.runtimes.manifest import BundleManifest

PROBE_ROUNDS = 5
PROBE_WARMUP = 2
# The bundle's own backend is kept unless another candidate is at least this much faster (probe noise).
MARGIN = 0.05
CACHE_VERSION = 1

Opener = Callable[[BackendInfo, RuntimeOptions, str], Backend]


@dataclass(frozen=True)
class Candidate:
    """One way to run the bundle: a backend and the precision hint it is given (None: the file's own)."""

    backend: str
    hint: str | None = None

    @property
    def label(self) -> str:
        return f"{self.backend} {self.hint}" if self.hint else self.backend


@dataclass(frozen=True)
class Choice:
    """What `auto` picked, why, and the probe figures behind it (ms for both encoders at batch 1)."""

    candidate: Candidate
    reason: str
    timings: dict[str, float]
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.candidate.backend,
            "precision_hint": self.candidate.hint,
            "reason": self.reason,
            "timings_ms": self.timings,
            "cached": self.cached,
        }


def candidates(target: str, requested_hint: str | None) -> list[Candidate]:
    """Every (backend, hint) able to run `target` bundles, the target's own backend first; f32 asked: exact only."""
    out = []
    for info in backends_for_target(target):
        hints = [h for h in info.precision_hints if requested_hint in (None, "auto") or h == requested_hint]
        if info.precision_hints == ("f32",):  # runs the file's own precision: one candidate, no hint to give
            out += [Candidate(info.name)] if requested_hint != "bf16" else []
        else:
            out += [Candidate(info.name, h) for h in hints]
    return out


def choose(timings: Mapping[Candidate, float], own: Candidate | None) -> tuple[Candidate, str]:
    """The fastest candidate by probe (ms), and why; the bundle's own backend wins unless beaten by MARGIN."""
    if not timings:
        raise EdgeclipError("auto: no backend could run this bundle here (each candidate failed to load)")
    ranked = sorted(timings.items(), key=lambda kv: kv[1])
    best, best_ms = ranked[0]
    figures = ", ".join(f"{c.label} {ms:.1f} ms" for c, ms in ranked)
    if own is not None and own in timings and own != best and timings[own] <= best_ms * (1 + MARGIN):
        return own, f"probe (image+text, batch 1): {figures}; the bundle's own backend is within {MARGIN:.0%}"
    return best, f"probe (image+text, batch 1): {figures}; fastest"


def cpu_flags() -> str:
    """The CPU's model and feature flags (what decides bf16/VNNI speed), as one string."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
        if key.strip() == "flags":
            break
    return f"{fields.get('model name', platform.machine())} | {fields.get('flags', '')}"


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def cache_key(manifest: BundleManifest, options: RuntimeOptions, names: Sequence[str]) -> str:
    """sha256 over what decides the choice: bundle checksums, CPU flags, backend versions, threads, hint asked."""
    checksums = {role: enc.sha256 for role, enc in manifest.encoders.items()} | dict(manifest.checksums)
    data = {
        "v": CACHE_VERSION,
        "checksums": dict(sorted(checksums.items())),
        "cpu": cpu_flags(),
        "versions": {name: _version(name) for name in sorted(names)},
        "threads": options.threads,
        "hint": options.precision_hint,
        "providers": list(options.providers or ()),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/edgeclip/backend-choice (default ~/.cache/edgeclip/backend-choice)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "edgeclip" / "backend-choice"


def probe_inputs(manifest: BundleManifest, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Batch-1 inputs of each encoder from the manifest's shapes: normal pixels, token ids of a short text."""
    rng = np.random.default_rng(seed)
    out = {}
    for role, enc in manifest.encoders.items():
        spec = enc.inputs[0]
        shape = [d if isinstance(d, int) else 1 for d in spec.shape]
        if spec.dtype.startswith("int"):
            arr = np.zeros(shape, dtype=spec.dtype)
            arr[..., : min(8, shape[-1])] = rng.integers(1, 1000, size=min(8, shape[-1]))
        else:
            arr = rng.standard_normal(shape).astype(spec.dtype)
        out[role] = {spec.name: arr}
    return out


def probe(
    manifest: BundleManifest,
    options: RuntimeOptions,
    cands: Sequence[Candidate],
    infos: Mapping[str, BackendInfo],
    open_encoder: Opener,
    rounds: int = PROBE_ROUNDS,
) -> tuple[dict[Candidate, float], dict[Candidate, dict[str, Backend]], dict[Candidate, str]]:
    """Load each candidate's encoders and time image+text at batch 1, interleaved; also why some could not load."""
    inputs = probe_inputs(manifest)
    sessions: dict[Candidate, dict[str, Backend]] = {}
    skipped: dict[Candidate, str] = {}
    for cand in cands:
        opts = replace(options, precision_hint=cand.hint)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opened = {role: open_encoder(infos[cand.backend], opts, role) for role in inputs}
        except EdgeclipError as e:  # not installed, cannot take these files: not a candidate here
            skipped[cand] = str(e)
            continue
        effective = getattr(opened["image"], "hint", cand.hint)
        if cand.hint is not None and effective != cand.hint:
            skipped[cand] = f"runs {effective} here"  # e.g. bf16 on a CPU without it: same as the f32 candidate
            continue
        sessions[cand] = opened
    for sess in sessions.values():
        for _ in range(PROBE_WARMUP):
            for role, feed in inputs.items():
                sess[role].run(feed)
    samples: dict[Candidate, list[float]] = {c: [] for c in sessions}
    for _ in range(rounds):
        for cand, sess in sessions.items():
            start = time.perf_counter()
            for role, feed in inputs.items():
                sess[role].run(feed)
            samples[cand].append((time.perf_counter() - start) * 1e3)
    return {c: statistics.median(s) for c, s in samples.items()}, sessions, skipped


def choose_backend(
    manifest: BundleManifest, options: RuntimeOptions, open_encoder: Opener, cache: Path | None = None
) -> tuple[Choice, RuntimeOptions, dict[str, Backend]]:
    """The auto choice for a bundle: from the cache, or probed now (and cached); its options and opened encoders."""
    infos = {info.name: info for info in backends_for_target(manifest.target)}
    cands = candidates(manifest.target, options.precision_hint)
    own = cands[0] if cands else None  # the target's own backend, exact
    folder = cache if cache is not None else cache_dir()
    path = folder / f"{cache_key(manifest, options, list(infos))}.json"
    cached = _read_cache(path)
    if cached is not None and cached.candidate in cands:
        return cached, replace(options, precision_hint=cached.candidate.hint), {}
    timings, sessions, skipped = probe(manifest, options, cands, infos, open_encoder)
    if not timings and own is not None:  # nothing runs here: the bundle's own backend says why, in its words
        for role in manifest.encoders:
            open_encoder(infos[own.backend], replace(options, precision_hint=own.hint), role)
    best, reason = choose(timings, own)
    if skipped:
        reason += "; not tried: " + "; ".join(f"{c.label} ({why.splitlines()[0][:120]})" for c, why in skipped.items())
    choice = Choice(best, reason, {c.label: round(ms, 3) for c, ms in timings.items()})
    _write_cache(path, choice)
    return choice, replace(options, precision_hint=best.hint), sessions[best]


def _read_cache(path: Path) -> Choice | None:
    """A cached choice, or None when absent or unreadable (a broken cache file is probed again, not trusted)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        cand = Candidate(str(data["backend"]), data["precision_hint"])
        return Choice(cand, str(data["reason"]), {str(k): float(v) for k, v in data["timings_ms"].items()}, True)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(path: Path, choice: Choice) -> None:
    """Store the choice atomically; a cache that cannot be written only costs a probe next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(choice.to_dict(), indent=2), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass
