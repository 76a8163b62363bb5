"""Errors raised for bad input: each names what was wrong and where."""


class LoreError(ValueError):
    """Base class for every error lore-rm raises on bad input or bad state.

    ``cli_message``, when set, is what the ``lore`` command prints instead of ``str()``: the
    same error with command-line options named where ``str()`` names Python arguments.
    """

    cli_message: str | None = None


class DataError(LoreError):
    """Input data is empty, malformed, non-finite or inconsistent."""


class OutputExistsError(DataError):
    """An output folder already exists and replacing it was not asked for."""

    def __init__(self, path: object, what: str = "already exists") -> None:
        super().__init__(f"{path}: {what}; pass overwrite=True to replace it")
        self.cli_message = f"{path}: {what}; pass --overwrite to replace it"


class ModelFormatError(LoreError):
    """A model folder is missing files or was written by another format version."""


class UnknownUserError(LoreError, KeyError):
    """A user id the model has no weights for."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown user"


class ConvergenceWarning(UserWarning):
    """A solver stopped on its iteration cap before meeting its convergence tolerance."""


class NoSignalWarning(UserWarning):
    """The fitted model predicts held-out comparisons no better than a coin or than the
    pooled rank-1 reward."""


class DivergenceError(LoreError, FloatingPointError):
    """A fit produced NaN or inf in a parameter."""


class StorageError(RuntimeError):
    """The database could not be read or written (disk full, read-only, locked, I/O error);
    a write that raised it stored nothing."""


class IdempotencyKeyReused(LoreError):
    """An idempotency key came back with a request body other than the one it was first
    used with."""
