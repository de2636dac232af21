"""Errors a user can read and act on.

Every error the workbench raises on purpose derives from `WorkbenchError`; the CLI turns it into
a one-line message and exit code 2, the app into a readable `st.error`. Errors name the field
that is wrong so the message says what to fix.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """Base class: a problem the user can fix (bad input, missing model, unsupported setting)."""


class BadInputError(WorkbenchError, ValueError):
    """An input value is malformed or inconsistent. `field` names the offending input."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class UnsupportedArchitectureError(WorkbenchError):
    """The model's `config.model_type` has no entry in the architecture table."""


class ModelLoadError(WorkbenchError):
    """The model could not be found or loaded (missing folder, hub unreachable, remote code)."""
