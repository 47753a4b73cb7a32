"""The typed errors users see.

Every user mistake raises a subclass of :class:`HvlmExportError`; the message says what was
wrong and, after ``Note:``, what to do. The CLI prints these without a traceback and exits 1.
Anything else escaping is a bug in hvlm-export and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "HvlmExportError",
    "ConfigError",
    "UnknownMechanismError",
    "ExportError",
    "BuildError",
    "TensorRTUnavailableError",
    "ValidationError",
    "RuntimeInputError",
    "ArtifactError",
    "BenchError",
    "ServingError",
]


class HvlmExportError(Exception):
    """Base class of every error caused by how the toolkit was used."""

    def __init__(self, message: str, note: str | None = None) -> None:
        self.message = message
        self.note = note
        super().__init__(message if note is None else f"{message}\nNote: {note}")


class ConfigError(HvlmExportError, ValueError):
    """A model config (YAML or dict) is malformed or names an invalid value."""


class UnknownMechanismError(HvlmExportError, KeyError):
    """A registry name that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return Exception.__str__(self)


class ExportError(HvlmExportError):
    """Exporting a model to ONNX failed or was asked for with invalid options."""


class BuildError(HvlmExportError):
    """Building a TensorRT engine failed."""


class TensorRTUnavailableError(BuildError):
    """The `tensorrt` Python package cannot be imported."""


class ValidationError(HvlmExportError):
    """A validation run could not be carried out (not: a run whose numbers failed)."""


class RuntimeInputError(HvlmExportError, ValueError):
    """A session was fed inputs with wrong names, ranks, shapes or dtypes."""


class ArtifactError(HvlmExportError):
    """An .onnx / .engine / metadata file is missing, corrupt or unusable."""


class ServingError(HvlmExportError):
    """A model repository or server was asked for with options that cannot work."""


class BenchError(HvlmExportError):
    """A benchmark was asked for with invalid options (unknown case, unwritable output)."""
