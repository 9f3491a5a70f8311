"""The exception hierarchy: every error a person can act on carries an exit code and a hint."""

from __future__ import annotations


class DynamoError(Exception):
    """A known failure: printed as one sentence plus a hint, never as a traceback."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(DynamoError):
    """Bad command line, bad profile, bad value: the user must change what they typed."""

    exit_code = 2


class ConfigError(UsageError):
    """A profile or override that does not validate; names the file and the key path."""


class StartupError(DynamoError):
    """A part could not start: port busy, etcd/NATS unreachable, model not loadable."""

    exit_code = 3


class RuntimeFailure(DynamoError):
    """Something that had started failed while running (a role died, a server went away)."""

    exit_code = 1


# Request-plane errors: raised to callers of a remote endpoint.
class RequestError(Exception):
    """A request to a remote endpoint failed."""


class NoRespondersError(RequestError):
    """Nobody is listening on the address (the instance is gone)."""


class RequestTimeoutError(RequestError):
    """The remote side did not answer in time."""


class RemoteError(RequestError):
    """The remote handler raised; the message is the remote side's."""

    def __init__(self, message: str, code: str = "internal") -> None:
        super().__init__(message)
        self.code = code


class WorkerDiedError(RequestError):
    """The instance serving the request is known to have died (its launcher saw it exit)."""
