"""The run folder: run.json (the settings a resume must match), log.jsonl, checkpoints and the final weights.

A checkpoint is open_clip-format safetensors weights plus a torch state file (optimizer, scheduler, every
process's RNG and data cursor), written through a temporary name, so a complete pair is a resumable point.
Rerunning the command in a folder with no checkpoint yet starts it again (its log trimmed); with one, it
asks for `--resume`; with other settings it is refused, naming them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from edgeclip.distill import distributed as ddp
from edgeclip.distill.batches import Cursor
from edgeclip.distill.config import DistillConfig
from edgeclip.errors import UsageError

RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"
MODEL_FILE = "model.safetensors"
CHECKPOINTS = "checkpoints"
_CKPT = re.compile(r"^step_(\d{7})\.safetensors$")
# Settings that may change on resume; every other one must match the run being resumed.
_MAY_CHANGE = frozenset(
    {
        "output",
        "resume",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "log_samples",
        "device",
        "eval",
        "eval_samples",
        "images",
    }
)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """The model's state dict as open_clip-format safetensors, written through a temporary name."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "producer": "edgeclip distill"})
    os.replace(tmp, path)


def latest_checkpoint(folder: Path) -> int | None:
    """The highest step with both its weights and its state file, or None."""
    steps = [int(m.group(1)) for p in folder.glob("step_*.safetensors") if (m := _CKPT.match(p.name))]
    complete = [s for s in steps if (folder / f"step_{s:07d}.state.pt").is_file()]
    return max(complete) if complete else None


def _holds_nothing(folder: Path) -> bool:
    """An empty folder, or one an interrupted start left with only an empty checkpoints/ folder."""
    entries = list(folder.iterdir())
    return not entries or (
        [e.name for e in entries] == [CHECKPOINTS] and entries[0].is_dir() and not any(entries[0].iterdir())
    )


class RunFolder:
    """The run folder: run.json, the log, checkpoints; rank 0 writes, every rank reads."""

    def __init__(self, config: DistillConfig, world: ddp.World, dataset_id: str, teachers: list) -> None:
        self.folder = Path(config.output)
        self.world = world
        self.ckpt = self.folder / CHECKPOINTS
        self.restarted = False
        self.record: dict[str, Any] = {
            **{k: v for k, v in config.to_dict().items() if k not in _MAY_CHANGE},
            "dataset_id": dataset_id,
            "teachers": teachers,
            "world_size": world.size,
        }

    def prepare(self, resume: bool) -> int | None:
        """Check or create the run folder; the checkpoint step to resume from, or None to start at step 0."""
        run_file = self.folder / RUN_FILE
        if run_file.exists():
            try:
                old = json.loads(run_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise UsageError(f"{run_file}: unreadable ({e}); choose a new --output") from None
            differ = [k for k in sorted(set(old) | set(self.record)) if old.get(k) != self.record.get(k)]
            if differ:
                what = ", ".join(f"{k} ({old.get(k)!r} -> {self.record.get(k)!r})" for k in differ[:3])
                more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
                head = f"cannot resume {self.folder}: the run used" if resume else f"{self.folder} holds a run with"
                raise UsageError(
                    f"{head} different settings: {what}{more}; rerun with its settings or choose a new --output"
                )
            step = latest_checkpoint(self.ckpt)
            if step is None:  # stopped before its first checkpoint: nothing to continue, start again cleanly
                self.restarted = True
                self.truncate_log(0)
                return None
            if not resume:
                raise UsageError(
                    f"{self.folder} holds a run: pass --resume to continue it from step {step}, "
                    "or choose a new --output"
                )
            return step
        if self.folder.exists() and not _holds_nothing(self.folder):
            raise UsageError(f"--output {self.folder} exists and is not an edgeclip run folder")
        ddp.barrier()
        if self.world.is_main:
            self.ckpt.mkdir(parents=True, exist_ok=True)
            tmp = run_file.with_name(f".{RUN_FILE}.tmp")
            tmp.write_text(json.dumps(self.record, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, run_file)
        ddp.barrier()
        return None

    def log(self, entry: dict) -> None:
        """Append one line to log.jsonl (rank 0 only)."""
        if self.world.is_main:
            with open(self.folder / LOG_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    def truncate_log(self, step: int) -> None:
        """Drop log lines after the checkpoint a resume starts from: those steps are run again."""
        path = self.folder / LOG_FILE
        if not self.world.is_main or not path.exists():
            return
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
        tmp = path.with_name(f".{LOG_FILE}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)

    def save(self, step: int, model, optimizer, scheduler, cursor: Cursor, keep: int) -> Path:
        """Write checkpoint `step` (weights, then state) and prune all but the newest `keep`."""
        cursors = ddp.gather_objects(asdict(cursor))
        rngs = ddp.gather_objects(torch.get_rng_state())
        path = self.ckpt / f"step_{step:07d}.safetensors"
        if self.world.is_main:
            save_weights(model, path)
            state = {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": rngs,
                "cursors": [[c["epoch"], c["position"], c["skipped"]] for c in cursors],
                "world_size": self.world.size,
            }
            state_path = self.ckpt / f"step_{step:07d}.state.pt"
            tmp = state_path.with_name(f".{state_path.name}.tmp")
            torch.save(state, tmp)
            os.replace(tmp, state_path)
            done = sorted(int(m.group(1)) for p in self.ckpt.glob("step_*.safetensors") if (m := _CKPT.match(p.name)))
            for old in done[:-keep]:
                (self.ckpt / f"step_{old:07d}.safetensors").unlink(missing_ok=True)
                (self.ckpt / f"step_{old:07d}.state.pt").unlink(missing_ok=True)
        ddp.barrier()
        return path

    def load(self, step: int, model, optimizer, scheduler) -> Cursor:
        """Restore weights, optimizer, scheduler and this process's RNG from checkpoint `step`; its data cursor."""
        from edgeclip.models.loading import read_state_dict

        model.load_state_dict(read_state_dict(self.ckpt / f"step_{step:07d}.safetensors"), strict=True)
        state = torch.load(self.ckpt / f"step_{step:07d}.state.pt", map_location="cpu", weights_only=True)
        if state["world_size"] != self.world.size:
            raise UsageError(
                f"checkpoint step {step} was written by {state['world_size']} processes, not {self.world.size}"
            )
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"][self.world.rank])
        epoch, position, skipped = state["cursors"][self.world.rank]
        return Cursor(int(epoch), int(position), int(skipped))

    def publish(self, step: int) -> Path:
        """Copy checkpoint `step`'s weights to model.safetensors beside run.json (rank 0), atomically."""
        import shutil

        final = self.folder / MODEL_FILE
        if self.world.is_main:
            tmp = final.with_name(f".{MODEL_FILE}.tmp")
            shutil.copyfile(self.ckpt / f"step_{step:07d}.safetensors", tmp)
            os.replace(tmp, final)
        return final


__all__ = ["CHECKPOINTS", "LOG_FILE", "MODEL_FILE", "RUN_FILE", "RunFolder", "latest_checkpoint", "save_weights"]
