"""The bundle manifest: the one contract between the export side and the runtime side."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from edgeclip.errors import BundleError
from edgeclip.runtimes.preprocess import PreprocessSpec
from edgeclip.runtimes.tokenizer import TokenizerSpec

MANIFEST_NAME = "manifest.json"
# Major bumps break readers; minor bumps only add optional fields.
# 1.1 adds `checksums`, a sha256 for every file in the bundle (tokenizer and heads included).
FORMAT_VERSION = "1.1"
ENCODER_ROLES = ("image", "text")
MAX_EMBED_DIM = 1 << 16  # far above any CLIP model's; a larger value is a broken or hostile manifest


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(data, dict):
        raise BundleError(f"manifest {where or 'root'} is {str(data)[:80]!r}: expected a JSON object")
    if key not in data:
        raise BundleError(f"manifest {where} lacks the field {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        names = "/".join(k.__name__ for k in _as_tuple(kind))
        raise BundleError(f"manifest {where}.{key} is {value!r}: expected {names}")
    return value


def _object(data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise BundleError(f"manifest {where} is {str(data)[:80]!r}: expected a JSON object")


def _optional(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        raise BundleError(
            f"manifest {where + '.' if where else ''}{key} is {str(value)[:80]!r}: expected {kind.__name__}"
        )
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def check_relative_path(path: str, where: str) -> str:
    """Reject manifest paths that are absolute or climb out of the bundle folder."""
    pure = PurePosixPath(path)
    bad = not path or "\0" in path or not pure.parts or pure.parts == (".",)
    if bad or pure.is_absolute() or "\\" in path or ".." in pure.parts or ":" in pure.parts[0]:
        raise BundleError(f"manifest {where} path {path!r} escapes the bundle: expected a relative path inside it")
    return path


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (ints, or strings for dynamic axes) and dtype of one encoder input or output."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> TensorSpec:
        shape = _require(data, "shape", list, where)
        if not all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in shape):
            raise BundleError(f"manifest {where}.shape is {shape!r}: expected ints or axis names")
        return cls(_require(data, "name", str, where), tuple(shape), _require(data, "dtype", str, where))


@dataclass(frozen=True)
class ParityReport:
    """How closely an exported encoder reproduced PyTorch at export time, on real sample inputs."""

    reference: str
    samples: int
    min_cosine: float
    mean_cosine: float
    max_abs_diff: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "samples": self.samples,
            "min_cosine": self.min_cosine,
            "mean_cosine": self.mean_cosine,
            "max_abs_diff": self.max_abs_diff,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> ParityReport:
        return cls(
            reference=_require(data, "reference", str, where),
            samples=_require(data, "samples", int, where),
            min_cosine=float(_require(data, "min_cosine", (int, float), where)),
            mean_cosine=float(_require(data, "mean_cosine", (int, float), where)),
            max_abs_diff=float(_require(data, "max_abs_diff", (int, float), where)),
        )


@dataclass(frozen=True)
class EncoderSpec:
    """One exported encoder: its file (relative to the bundle), sha256, inputs, outputs and parity."""

    file: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parity: ParityReport | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "parity": self.parity.to_dict() if self.parity else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> EncoderSpec:
        _object(data, where)
        parity = data.get("parity")
        return cls(
            file=check_relative_path(_require(data, "file", str, where), f"{where}.file"),
            sha256=_require(data, "sha256", str, where),
            inputs=tuple(
                TensorSpec.from_dict(t, f"{where}.inputs[{i}]")
                for i, t in enumerate(_require(data, "inputs", list, where))
            ),
            outputs=tuple(
                TensorSpec.from_dict(t, f"{where}.outputs[{i}]")
                for i, t in enumerate(_require(data, "outputs", list, where))
            ),
            parity=ParityReport.from_dict(parity, f"{where}.parity") if parity else None,
        )


@dataclass(frozen=True)
class SourceModel:
    """Where the weights came from: open_clip architecture, pretrained tag or file, and hashes."""

    architecture: str
    pretrained: str | None
    checkpoint_sha256: str | None
    weights_sha256: str
    random_init: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "pretrained": self.pretrained,
            "checkpoint_sha256": self.checkpoint_sha256,
            "weights_sha256": self.weights_sha256,
            "random_init": self.random_init,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> SourceModel:
        _object(data, where)
        return cls(
            architecture=_require(data, "architecture", str, where),
            pretrained=_optional(data, "pretrained", str, where),
            checkpoint_sha256=_optional(data, "checkpoint_sha256", str, where),
            weights_sha256=_require(data, "weights_sha256", str, where),
            random_init=_require(data, "random_init", bool, where),
        )

    @property
    def model_id(self) -> str:
        """Identity of the weights, which heads are bound to: architecture plus a weights digest."""
        return f"{self.architecture}@{self.weights_sha256[:16]}"


@dataclass(frozen=True)
class BundleManifest:
    """Everything a device needs to use a bundle's files correctly; written as manifest.json."""

    source: SourceModel
    target: str
    precision: str
    embed_dim: int
    logit_scale: float
    encoders: dict[str, EncoderSpec]
    preprocess: PreprocessSpec
    tokenizer: TokenizerSpec
    edgeclip_version: str
    created: str
    format_version: str = FORMAT_VERSION
    preprocess_source: str = ""
    calibration: dict[str, Any] | None = None
    target_info: dict[str, Any] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        return self.source.model_id

    def files(self) -> list[str]:
        """Relative paths of every file the manifest names."""
        return [enc.file for enc in self.encoders.values()] + [self.tokenizer.file]

    @property
    def covers_every_file(self) -> bool:
        """Whether `checksums` names every file of the bundle (format 1.1 on); a 1.0 bundle covers its encoders only."""
        major, _, minor = self.format_version.partition(".")
        return (int(major), int(minor.split(".")[0] or 0)) >= (1, 1)

    def expected_sha256(self, relative: str) -> str | None:
        """The recorded sha256 of a bundle file, or None when the manifest records none."""
        for enc in self.encoders.values():
            if enc.file == relative:
                return enc.sha256
        return self.checksums.get(relative)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "edgeclip_version": self.edgeclip_version,
            "created": self.created,
            "model_id": self.model_id,
            "source": self.source.to_dict(),
            "target": self.target,
            "precision": self.precision,
            "embed_dim": self.embed_dim,
            "logit_scale": self.logit_scale,
            "encoders": {role: enc.to_dict() for role, enc in self.encoders.items()},
            "preprocess": self.preprocess.to_dict(),
            "preprocess_source": self.preprocess_source,
            "tokenizer": self.tokenizer.to_dict(),
            "calibration": self.calibration,
            "target_info": self.target_info,
            "checksums": dict(sorted(self.checksums.items())),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleManifest:
        if not isinstance(data, dict):
            raise BundleError("manifest is not a JSON object")
        version = _require(data, "format_version", str, "")
        major, _, minor = version.partition(".")
        if not major.isdigit() or (minor and not minor.split(".")[0].isdigit()):
            raise BundleError(f"manifest format_version {version!r} is not of the form MAJOR.MINOR")
        if int(major) > int(FORMAT_VERSION.split(".")[0]):
            raise BundleError(
                f"manifest format_version {version} is newer than this edgeclip reads ({FORMAT_VERSION}): "
                "upgrade edgeclip"
            )
        encoders_data = _require(data, "encoders", dict, "")
        encoders = {}
        for role in ENCODER_ROLES:
            if role not in encoders_data:
                raise BundleError(f"manifest encoders lacks the {role!r} encoder")
            encoders[role] = EncoderSpec.from_dict(encoders_data[role], f"encoders.{role}")
        tokenizer = TokenizerSpec.from_dict(_require(data, "tokenizer", dict, ""))
        check_relative_path(tokenizer.file, "tokenizer.file")
        embed_dim = _require(data, "embed_dim", int, "")
        if not 1 <= embed_dim <= MAX_EMBED_DIM:
            raise BundleError(f"manifest embed_dim is {embed_dim}: expected a positive int up to {MAX_EMBED_DIM}")
        logit_scale = float(_require(data, "logit_scale", (int, float), ""))
        if not math.isfinite(logit_scale) or logit_scale <= 0:
            raise BundleError(f"manifest logit_scale is {logit_scale}: expected a finite positive number")
        checksums = data.get("checksums") or {}
        if not isinstance(checksums, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in checksums.items()
        ):
            raise BundleError("manifest checksums is malformed: expected an object of file path -> sha256 hex")
        for relative in checksums:
            check_relative_path(relative, "checksums")
        return cls(
            source=SourceModel.from_dict(_require(data, "source", dict, ""), "source"),
            target=_require(data, "target", str, ""),
            precision=_require(data, "precision", str, ""),
            embed_dim=embed_dim,
            logit_scale=logit_scale,
            encoders=encoders,
            preprocess=PreprocessSpec.from_dict(_require(data, "preprocess", dict, "")),
            tokenizer=tokenizer,
            edgeclip_version=_require(data, "edgeclip_version", str, ""),
            created=_require(data, "created", str, ""),
            format_version=version,
            preprocess_source=_optional(data, "preprocess_source", str, "") or "",
            calibration=_optional(data, "calibration", dict, ""),
            target_info=_optional(data, "target_info", dict, "") or {},
            checksums=dict(checksums),
        )

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST_NAME) -> BundleManifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BundleError(f"{where} is not valid JSON (line {e.lineno}: {e.msg})") from None
        except RecursionError:
            raise BundleError(f"{where} is nested too deeply to be a manifest: expected a JSON object") from None
        if not isinstance(data, dict):
            raise BundleError(f"{where} holds a JSON {type(data).__name__}: expected an object")
        return cls.from_dict(data)


@dataclass(frozen=True)
class TensorRTRecord:
    """What a TensorRT engine is bound to (TensorRT version, GPU, compute capability) and how it was built.

    Stored as the manifest's optional ``target_info["tensorrt"]`` (format 1.x readers ignore it): engines are
    device-specific, so the backend compares it with the device it runs on before deserializing.
    """

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7" for Jetson Orin, "9.0" for H100/H200
    batch_profile: tuple[int, int, int]  # (min, opt, max) of the batch axis
    workspace_mib: int
    strongly_typed: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "batch_profile": list(self.batch_profile),
            "workspace_mib": self.workspace_mib,
            "strongly_typed": self.strongly_typed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "target_info.tensorrt") -> TensorRTRecord:
        if not isinstance(data, dict):
            raise BundleError(f"manifest {where} is {data!r}: expected an object")
        profile = _require(data, "batch_profile", list, where)
        if len(profile) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in profile):
            raise BundleError(f"manifest {where}.batch_profile is {profile!r}: expected [min, opt, max] batch sizes")
        return cls(
            tensorrt_version=_require(data, "tensorrt_version", str, where),
            gpu_name=_require(data, "gpu_name", str, where),
            compute_capability=_require(data, "compute_capability", str, where),
            batch_profile=(profile[0], profile[1], profile[2]),
            workspace_mib=_require(data, "workspace_mib", int, where),
            strongly_typed=bool(data.get("strongly_typed", True)),
        )

    def mismatch(self, tensorrt_version: str, gpu_name: str, compute_capability: str) -> str | None:
        """Why an engine built as recorded cannot run on the given device (None: it can)."""
        if tensorrt_version != self.tensorrt_version:
            return f"it was built with TensorRT {self.tensorrt_version}, and this is TensorRT {tensorrt_version}"
        if (gpu_name, compute_capability) != (self.gpu_name, self.compute_capability):
            return (
                f"it was built for {self.gpu_name} (compute capability {self.compute_capability}), and this GPU is "
                f"{gpu_name} (compute capability {compute_capability})"
            )
        return None
