"""Errors the user can fix: bad data, a missing or corrupt file, a busy output folder, no network.

Loaders raise :class:`UserError` with a message that names the file and says what to do, in one
or two lines. The command line (:func:`scaledet.cli.main`) prints such errors, and the other
errors a user can cause (``ValueError``, ``OSError``), as ``scaledet <command>: error: ...``
with exit status 2 and no traceback; ``scaledet --debug <command> ...`` shows the traceback.

``UserError`` is a ``ValueError``, so code that caught ``ValueError`` before keeps working.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem in the user's input or environment; the message names the file and the fix."""


class OptionError(UserError):
    """An option with a value it cannot take: ``option`` is its name (a ``TrainConfig`` field), ``requirement``
    what it must be. Reads ``"lr must be > 0, got -1.0"``; the command line names the flag instead."""

    def __init__(self, option: str, requirement: str):
        super().__init__(f"{option} {requirement}")
        self.option, self.requirement = option, requirement


class DownloadError(UserError, RuntimeError):
    """A published checkpoint could not be downloaded or does not match its hash.

    Also a ``RuntimeError``, what :func:`scaledet.hub.download_checkpoint` raised before.
    """
