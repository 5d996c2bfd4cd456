"""The exceptions edgeclip raises: one line each, naming the file or value and what was expected."""

from __future__ import annotations


class EdgeclipError(Exception):
    """Base of every error edgeclip raises on purpose; the CLI prints its message as one line."""


class UsageError(EdgeclipError):
    """The request itself is wrong (a bad option value, an unknown name); the CLI exits with 2."""


class ImageError(EdgeclipError):
    """An image could not be read or decoded."""


class BundleError(EdgeclipError):
    """A bundle folder or its manifest is missing, malformed, of a newer schema or unsafe."""


class ModelError(EdgeclipError):
    """A model name or checkpoint could not be resolved or does not fit the architecture."""


class ExportError(EdgeclipError):
    """An export failed or did not meet its parity gate."""


class TokenizerError(EdgeclipError):
    """Tokenizer data could not be built or loaded."""


class RuntimeUnavailable(EdgeclipError):
    """A runtime cannot run on this machine (CoreML off Apple platforms, TensorRT without an NVIDIA GPU)."""


class DatasetError(EdgeclipError):
    """An image–caption source, a reinforced shard or a dataset manifest is missing, malformed or inconsistent."""


class ResultsError(EdgeclipError):
    """A benchmark results file is missing, not JSON, of another schema or malformed."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a command: cleanup runs as for Ctrl-C, then the CLI exits 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
