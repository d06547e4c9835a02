"""Errors a user can cause. Each message says what was wrong and what to do."""


class WorkbenchError(Exception):
    """Base class for every error the UI and CLI show to the user as a message."""


class SpecError(WorkbenchError):
    """A network, data or training spec is invalid."""


class PresetNotFound(SpecError):
    """An unknown preset name was asked for."""


class DataError(WorkbenchError):
    """A dataset is missing, malformed or not allowed."""


class StoreError(WorkbenchError):
    """The run store cannot do what was asked (bad database, illegal state change)."""


class RunNotFound(StoreError):
    """No run has the given id."""


class IllegalTransition(StoreError):
    """A run cannot move from its current status to the requested one."""


class UnsafeFileError(WorkbenchError):
    """A file would need arbitrary code execution to load and was refused."""
