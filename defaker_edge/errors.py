"""Typed errors. The CLI prints these as one clear line (never a traceback) and exits 2."""

from __future__ import annotations


class DefakerError(Exception):
    """Base class for every error a user can cause and fix (bad input, missing file, wrong package)."""


class ImageError(DefakerError):
    """An image could not be read: corrupt, truncated, empty, too large, or not an image."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DatasetError(DefakerError):
    """A dataset (manifest or folders) is malformed; the message lists every offender."""


class ArtifactError(DefakerError):
    """An artifact directory (checkpoint, cache, calibration set, package) is missing, partial or inconsistent."""


class MissingDependencyError(DefakerError):
    """An optional dependency (torch, tensorrt, modelopt, ...) is needed for this command but not installed."""

    def __init__(self, package: str, purpose: str, hint: str = ""):
        msg = f"{package} is required for {purpose} but is not installed"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)
        self.package = package
