"""Named exceptions of the model layer. Only the CLI and the app turn them into messages."""

from __future__ import annotations

__all__ = ["BioclipError", "ModelSpecError", "ModelNotAvailableError", "DeviceError"]


class BioclipError(Exception):
    """Base class of everything ``bioclip`` raises on purpose."""


class ModelSpecError(BioclipError, ValueError):
    """A model string (or ``ModelSpec``) cannot be parsed or names nothing loadable.

    The message lists the accepted forms. Also a ``ValueError``: it is a bad argument.
    """


class ModelNotAvailableError(BioclipError):
    """The model is known but its weights cannot be had here (not cached, hub unreachable,
    folder without weights, missing checkpoint file).

    The message says which model, where it looked and how to make the model available offline.
    ``model`` is the model's name and ``locations`` the places looked in.
    """

    def __init__(self, message: str, *, model: str | None = None, locations: tuple[str, ...] = ()):
        super().__init__(message)
        self.model = model
        self.locations = tuple(locations)


class DeviceError(BioclipError):
    """A device (``cuda``, ``mps``, ...) was asked for that this machine does not have, or a
    device or precision string is not understood."""
