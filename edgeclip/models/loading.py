"""Build open_clip / MobileCLIP models and load their weights from local files (or a hub where one is reachable)."""

from __future__ import annotations

import difflib
import hashlib
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import torch
from torch import nn

from edgeclip.errors import ModelError, UsageError

if TYPE_CHECKING:

    class ClipModel(nn.Module):
        """What edgeclip uses of an open_clip CLIP-family model (CLIP, CustomTextCLIP, CoCa): open_clip has no types."""

        visual: nn.Module
        logit_scale: nn.Parameter

        def encode_image(self, image: torch.Tensor, normalize: bool = ...) -> torch.Tensor: ...
        def encode_text(self, text: torch.Tensor, normalize: bool = ...) -> torch.Tensor: ...

    class CocaModel(ClipModel):
        """What edgeclip uses of open_clip's CoCa: a CLIP model that also generates caption tokens."""

        def generate(self, image: torch.Tensor, **options: Any) -> torch.Tensor: ...

else:
    ClipModel = nn.Module
    CocaModel = nn.Module


def is_coca(model: ClipModel) -> TypeGuard[CocaModel]:
    """Whether `model` can generate captions (open_clip's CoCa family)."""
    return hasattr(model, "generate")


CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_HUB_HOST = "huggingface.co"


@dataclass(frozen=True)
class LoadedModel:
    """An open_clip model in eval mode with where its weights came from."""

    model: ClipModel
    architecture: str
    pretrained: str | None
    checkpoint_sha256: str | None
    random_init: bool

    def weights_sha256(self) -> str:
        """Digest of the weights themselves (names, shapes, dtypes, bytes): the model's identity."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return digest.hexdigest()


CONFIG_DIR = Path(__file__).parent / "configs"


def register_edgeclip_configs() -> None:
    """Make edgeclip's own small architectures (JSON configs shipped in the package) known to open_clip."""
    import open_clip

    if not set(p.stem for p in CONFIG_DIR.glob("*.json")) <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)


def check_architecture(name: str) -> str:
    """An open_clip architecture name, or a UsageError suggesting the closest known names."""
    import open_clip

    register_edgeclip_configs()
    known = open_clip.list_models()
    if name in known:
        return name
    lowered = {k.lower(): k for k in known}
    if name.lower() in lowered:
        return lowered[name.lower()]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `open_clip.list_models()`"
    raise UsageError(f"unknown model {name!r}{hint}")


def _sha256(path: Path) -> str:
    from edgeclip.runtimes.bundle import sha256_file

    return sha256_file(path)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, a torch state dict or an open_clip training checkpoint (never unpickled)."""
    if not path.exists():
        raise ModelError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise ModelError(f"checkpoint {path} is not a file")
    if path.stat().st_size == 0:
        raise ModelError(f"checkpoint {path} is empty (0 bytes)")
    data: object  # what the file holds, checked below
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch.load raise many unrelated types for a bad file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        kind = "safetensors" if path.suffix == ".safetensors" else "torch (weights only)"
        raise ModelError(f"checkpoint {path} could not be read as a {kind} file: {reason[:200]}") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelError(f"checkpoint {path} holds no state dict of tensors")
    if all(k.startswith("module.") for k in data):
        data = {k[len("module.") :]: v for k, v in data.items()}
    return data


def _fit_to_model(model: ClipModel, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip's own conversions for older and third-party layouts, so any checkpoint it loads we load."""
    from open_clip.factory import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state_dict = convert_state_dict(model, state_dict)
    if "positional_embedding" in state_dict and not hasattr(model, "positional_embedding"):
        state_dict = convert_to_custom_text_state_dict(state_dict)
    if "logit_scale" in state_dict and model.logit_scale.ndim != state_dict["logit_scale"].ndim:
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(model.logit_scale.shape)
    resize_pos_embed(state_dict, model)
    resize_text_pos_embed(state_dict, model)
    return state_dict


def load_weights(model: ClipModel, path: Path, architecture: str) -> None:
    """Load a local checkpoint into `model`, refusing one that does not fit the architecture."""
    try:
        state_dict = _fit_to_model(model, read_state_dict(path))
    except (AssertionError, RuntimeError, ValueError, IndexError) as e:  # open_clip's resizers assert on widths
        detail = " ".join(str(e).split())[:200] or type(e).__name__
        raise ModelError(
            f"checkpoint {path} does not match {architecture}: a positional embedding has a shape the architecture "
            f"cannot take ({detail})"
        ) from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", mismatched)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise ModelError(
            f"checkpoint {path} does not match {architecture}: {len(expected)} keys expected, " + ", ".join(parts)
        )
    model.load_state_dict(state_dict, strict=True)


def _looks_like_file(pretrained: str) -> bool:
    if pretrained.startswith("hf-hub:"):
        return False
    return Path(pretrained).exists() or Path(pretrained).suffix in CHECKPOINT_SUFFIXES or "/" in pretrained


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((_HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


class _DropRandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded for model")


def unweighted_model(architecture: str) -> ClipModel:
    """open_clip's model without weights, minus its root-logger notice that it is random.

    edgeclip either loads the checkpoint into it next or was asked for random weights, and says so itself.
    """
    import open_clip

    notice = _DropRandomInitNotice()
    logging.getLogger().addFilter(notice)
    try:
        return init_left_empty(open_clip.create_model(architecture, pretrained=None))
    finally:
        logging.getLogger().removeFilter(notice)


def init_left_empty(model: ClipModel) -> ClipModel:
    """Draw, from the current RNG, the weights open_clip leaves as `torch.empty` memory; returns `model`.

    open_clip never calls CoCa's `MultimodalTransformer.init_parameters` (which would fail: open_clip PR #551), so
    its decoder's `text_projection` holds whatever memory it was given: random weights differ run to run, sometimes
    NaN. It is drawn as that method means to; every other weight keeps the init open_clip gives it.
    """
    decoder = getattr(model, "text_decoder", None)
    projection = getattr(decoder, "text_projection", None)
    if isinstance(projection, nn.Parameter):
        with torch.no_grad():
            nn.init.normal_(projection, std=projection.shape[0] ** -0.5)  # the decoder's width
    return model


def load_model(
    architecture: str, pretrained: str | None = None, *, random_init: bool = False, seed: int = 0
) -> LoadedModel:
    """An open_clip model in eval mode: weights from a local file, a pretrained tag / hf-hub id, or random init."""
    import open_clip

    architecture = check_architecture(architecture)
    if random_init and pretrained:
        raise UsageError("--random-init and --pretrained exclude each other: give one")
    checkpoint_sha = None
    if random_init:
        # Seeded inside a forked RNG so that random weights are reproducible and the caller's RNG is untouched.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = unweighted_model(architecture)
    elif not pretrained:
        raise UsageError(
            "no weights given: pass --pretrained FILE (a .safetensors/.pt checkpoint), a pretrained tag, "
            "or --random-init for random weights on purpose"
        )
    elif _looks_like_file(pretrained):
        path = Path(pretrained)
        model = unweighted_model(architecture)
        load_weights(model, path, architecture)
        checkpoint_sha = _sha256(path)
    else:
        tags = open_clip.list_pretrained_tags_by_model(architecture)
        if not pretrained.startswith("hf-hub:") and pretrained not in tags:
            raise UsageError(
                f"--pretrained {pretrained!r} is neither a checkpoint file nor a pretrained tag of {architecture} "
                f"(tags: {', '.join(tags) or 'none'})"
            )
        if not _hub_reachable():
            raise ModelError(
                f"pretrained {pretrained!r} must be downloaded from {_HUB_HOST}, which is not reachable from here: "
                "download the weights elsewhere and pass the local file with --pretrained ./weights.safetensors"
            )
        try:
            model = open_clip.create_model(architecture, pretrained=pretrained)
        except Exception as e:  # open_clip wraps hub and file errors in RuntimeError with a long message
            reason = str(e)[:200]
            raise ModelError(f"pretrained {pretrained!r} for {architecture} could not be loaded: {reason}") from None
    model.eval()
    return LoadedModel(model, architecture, pretrained, checkpoint_sha, random_init)
