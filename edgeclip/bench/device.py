"""Facts about the device a benchmark ran on: CPU, ISA extensions, GPU, OS, Python and runtime versions.

Torch-free and import-free: versions come from package metadata, hardware from /proc, sysctl, lscpu and
nvidia-smi where they exist. A fact that cannot be found is None (or empty), never a guess, and collecting
never raises: a farm device with an odd kernel still contributes a results file.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Packages whose versions decide the figures; read from metadata, never imported.
VERSIONED_PACKAGES = (
    "edgeclip",
    "numpy",
    "pillow",
    "onnxruntime",
    "onnxruntime-gpu",
    "tokenizers",
    "torch",
    "open_clip_torch",
    "timm",
    "coremltools",
    "openvino",
    "tensorrt",
)

# ISA extensions that change how fast int8/fp16/fp32 kernels run, by the names Linux /proc/cpuinfo uses.
# Our name -> kernel flag names (x86 "flags", ARM "Features"); any one present means the extension is there.
_LINUX_ISA_FLAGS: dict[str, tuple[str, ...]] = {
    "sse4_2": ("sse4_2",),
    "avx2": ("avx2",),
    "fma": ("fma",),
    "f16c": ("f16c",),
    "avx512f": ("avx512f",),
    "avx512_vnni": ("avx512_vnni",),
    "avx512_bf16": ("avx512_bf16",),
    "avx512_fp16": ("avx512_fp16",),
    "avx_vnni": ("avx_vnni",),
    "amx_int8": ("amx_int8",),
    "amx_bf16": ("amx_bf16",),
    "neon": ("asimd", "neon"),
    "fp16": ("asimdhp", "fphp"),
    "dotprod": ("asimddp",),
    "i8mm": ("i8mm",),
    "bf16": ("bf16",),
    "sve": ("sve",),
    "sve2": ("sve2",),
    "sme": ("sme",),
}
# The same extensions as macOS reports them (`sysctl hw.optional`).
_MACOS_ISA_KEYS: dict[str, tuple[str, ...]] = {
    "avx2": ("hw.optional.avx2_0",),
    "fma": ("hw.optional.fma",),
    "avx512f": ("hw.optional.avx512f",),
    "avx512_vnni": ("hw.optional.avx512vnni",),
    "neon": ("hw.optional.neon", "hw.optional.AdvSIMD"),
    "fp16": ("hw.optional.neon_fp16", "hw.optional.arm.FEAT_FP16"),
    "dotprod": ("hw.optional.arm.FEAT_DotProd",),
    "i8mm": ("hw.optional.arm.FEAT_I8MM",),
    "bf16": ("hw.optional.arm.FEAT_BF16",),
    "sme": ("hw.optional.arm.FEAT_SME",),
}


@dataclass(frozen=True)
class GpuInfo:
    """One GPU or accelerator: its name, driver and memory, as the vendor tool reports them."""

    name: str
    driver: str | None = None
    memory_mb: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "driver": self.driver, "memory_mb": self.memory_mb}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GpuInfo:
        return cls(str(data["name"]), data.get("driver"), data.get("memory_mb"))


@dataclass(frozen=True)
class DeviceInfo:
    """What a farm report needs to tell devices apart and explain their figures."""

    name: str  # the label the farm knows the device by (default: the host name)
    system: str  # Linux, Darwin, Windows
    os_release: str
    platform: str  # platform.platform(): OS, kernel and libc in one string
    machine: str  # x86_64, arm64, aarch64
    cpu_model: str | None
    board: str | None  # device-tree model on boards such as Jetson and Raspberry Pi
    cpu_logical: int | None
    cpu_physical: int | None
    cpu_usable: int | None  # CPUs this process may run on (affinity, cgroup-free count)
    isa: tuple[str, ...]
    memory_total_mb: int | None
    gpus: tuple[GpuInfo, ...]
    onnxruntime_providers: tuple[str, ...]
    python: str
    versions: dict[str, str] = field(default_factory=dict)
    load_average: tuple[float, float, float] | None = None  # 1, 5, 15 min when the run started: other work

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "system": self.system,
            "os_release": self.os_release,
            "platform": self.platform,
            "machine": self.machine,
            "cpu_model": self.cpu_model,
            "board": self.board,
            "cpu_logical": self.cpu_logical,
            "cpu_physical": self.cpu_physical,
            "cpu_usable": self.cpu_usable,
            "isa": list(self.isa),
            "memory_total_mb": self.memory_total_mb,
            "gpus": [g.to_dict() for g in self.gpus],
            "onnxruntime_providers": list(self.onnxruntime_providers),
            "python": self.python,
            "versions": dict(self.versions),
            "load_average": list(self.load_average) if self.load_average else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceInfo:
        load = data.get("load_average")
        return cls(
            name=str(data["name"]),
            system=str(data["system"]),
            os_release=str(data.get("os_release") or ""),
            platform=str(data.get("platform") or ""),
            machine=str(data.get("machine") or ""),
            cpu_model=data.get("cpu_model"),
            board=data.get("board"),
            cpu_logical=data.get("cpu_logical"),
            cpu_physical=data.get("cpu_physical"),
            cpu_usable=data.get("cpu_usable"),
            isa=tuple(data.get("isa") or ()),
            memory_total_mb=data.get("memory_total_mb"),
            gpus=tuple(GpuInfo.from_dict(g) for g in data.get("gpus") or ()),
            onnxruntime_providers=tuple(data.get("onnxruntime_providers") or ()),
            python=str(data.get("python") or ""),
            versions=dict(data.get("versions") or {}),
            # Kept as the file has it (three numbers when edgeclip wrote it); a length check would be new behaviour.
            load_average=tuple(float(v) for v in load) if load else None,  # type: ignore[arg-type]
        )

    def summary(self) -> str:
        """One line for a table header: name, CPU, cores, ISA and GPU."""
        cpu = self.cpu_model or self.machine or "unknown CPU"
        cores = f"{self.cpu_usable or self.cpu_logical or '?'} CPUs"
        isa = f" [{' '.join(self.isa)}]" if self.isa else ""
        gpu = f", {', '.join(g.name for g in self.gpus)}" if self.gpus else ""
        return f"{self.name}: {cpu}, {cores}{isa}{gpu}; {self.system} {self.os_release}, Python {self.python}"


def collect_device_info(name: str | None = None) -> DeviceInfo:
    """The facts of the machine this process runs on; `name` labels it in reports (default: the host name)."""
    system = platform.system()
    cpuinfo = _read_text("/proc/cpuinfo") if system == "Linux" else ""
    sysctl = _sysctl_values() if system == "Darwin" else {}
    return DeviceInfo(
        name=name or platform.node() or "unknown",
        system=system,
        os_release=platform.release(),
        platform=platform.platform(),
        machine=platform.machine(),
        cpu_model=_cpu_model(system, cpuinfo, sysctl),
        board=_board(),
        cpu_logical=os.cpu_count(),
        cpu_physical=_physical_cores(cpuinfo, sysctl),
        cpu_usable=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        isa=_isa(cpuinfo, sysctl),
        memory_total_mb=_memory_total_mb(sysctl),
        gpus=_gpus(),
        onnxruntime_providers=_onnxruntime_providers(),
        python=platform.python_version(),
        versions=package_versions(),
        load_average=_load_average(),
    )


def package_versions(packages: tuple[str, ...] = VERSIONED_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that decide the figures (absent ones left out), without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in packages:
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


# --- readers: each returns None/empty when the fact is not available here ---------------------------------


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _run(cmd: list[str], timeout: float = 5.0) -> str:
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout if out.returncode == 0 else ""


def _cpuinfo_field(cpuinfo: str, key: str) -> str | None:
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == key and value.strip():
            return value.strip()
    return None


def _sysctl_values() -> dict[str, str]:
    values = {}
    keys = ["machdep.cpu.brand_string", "hw.physicalcpu", "hw.memsize", "hw.optional"]
    for line in _run(["sysctl", *keys]).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip()
    return values


def _cpu_model(system: str, cpuinfo: str, sysctl: dict[str, str]) -> str | None:
    if system == "Darwin":
        return sysctl.get("machdep.cpu.brand_string") or None
    model = _cpuinfo_field(cpuinfo, "model name")
    if model:
        return model
    # ARM kernels name no model in /proc/cpuinfo; lscpu decodes the part number (e.g. Cortex-A78AE).
    for line in _run(["lscpu"]).splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "Model name" and value.strip() not in ("", "-"):
            return value.strip()
    return _cpuinfo_field(cpuinfo, "Hardware") or platform.processor() or None


def _board() -> str | None:
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        text = _read_text(path).strip("\x00 \n")
        if text:
            return text
    return None


def _physical_cores(cpuinfo: str, sysctl: dict[str, str]) -> int | None:
    if sysctl.get("hw.physicalcpu", "").isdigit():
        return int(sysctl["hw.physicalcpu"])
    cores = set()
    physical = core = None
    for line in [*cpuinfo.splitlines(), ""]:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not line.strip():
            if physical is not None and core is not None:
                cores.add((physical, core))
            physical = core = None
    return len(cores) or None


def _isa(cpuinfo: str, sysctl: dict[str, str]) -> tuple[str, ...]:
    if sysctl:
        return tuple(name for name, keys in _MACOS_ISA_KEYS.items() if any(sysctl.get(k) == "1" for k in keys))
    flags = set((_cpuinfo_field(cpuinfo, "flags") or _cpuinfo_field(cpuinfo, "Features") or "").split())
    if not flags and platform.machine().lower() in ("arm64", "aarch64"):
        return ("neon",)  # AArch64 makes Advanced SIMD mandatory
    return tuple(name for name, kernel in _LINUX_ISA_FLAGS.items() if flags.intersection(kernel))


def _memory_total_mb(sysctl: dict[str, str]) -> int | None:
    if sysctl.get("hw.memsize", "").isdigit():
        return int(sysctl["hw.memsize"]) // (1 << 20)
    for line in _read_text("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) // 1024
    return None


def _gpus() -> tuple[GpuInfo, ...]:
    gpus = []
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"]
    for line in _run(query, timeout=10.0).splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[0]:
            gpus.append(GpuInfo(parts[0], parts[1] or None, int(parts[2]) if parts[2].isdigit() else None))
    tegra = _read_text("/etc/nv_tegra_release").splitlines()
    if not gpus and tegra:  # Jetson: an integrated GPU that nvidia-smi may not list; L4T release as the driver
        gpus.append(GpuInfo("NVIDIA Tegra (integrated)", tegra[0].lstrip("# ").strip() or None))
    return tuple(gpus)


def _onnxruntime_providers() -> tuple[str, ...]:
    try:
        import onnxruntime
    except ImportError:
        return ()
    return tuple(onnxruntime.get_available_providers())


def _load_average() -> tuple[float, float, float] | None:
    try:
        one, five, fifteen = os.getloadavg()
        return round(one, 2), round(five, 2), round(fifteen, 2)
    except (OSError, AttributeError):
        return None


if __name__ == "__main__":  # pragma: no cover - a quick look: python -m edgeclip.bench.device
    import json

    json.dump(collect_device_info().to_dict(), sys.stdout, indent=2)
    sys.stdout.write("\n")
