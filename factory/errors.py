"""Errors that reach users: each names the file, row, field, task or id at fault and what to do."""


class FactoryError(Exception):
    """Base class of every error the factory reports to a user."""


class SpecError(FactoryError):
    """A dataset spec is missing, malformed or invalid."""


class IngestError(FactoryError):
    """A file cannot be ingested; nothing was written."""


class TaskError(FactoryError):
    """A human answer cannot be accepted (unknown task, label outside the schema, already answered)."""


class TaskRefused(TaskError):
    """The workforce rules refuse this person this task: suspended, under-tier, not assigned, own label."""


class NotReadyError(FactoryError):
    """A step waits on people or on an earlier step."""


class ReleaseError(FactoryError):
    """A release cannot be written (blocking check failed, version exists, nothing new)."""


class ReleaseRefused(ReleaseError):
    """A release failed a blocking gate or expectation: nothing was written; the attempt is in the ledger."""

    def __init__(self, message: str, version: str, failures: list[str]):
        super().__init__(message)
        self.version = version
        self.failures = failures
