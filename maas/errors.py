"""One root for every error a user can cause, BentoML-style.

Each kind carries what it maps to: ``http_status`` for the HTTP app (one exception handler turns
any ``MaasError`` into ``{"error": message}`` with that status) and ``exit_code`` for the CLIs
(which catch ``MaasError`` alone, so a real bug keeps its traceback).

The kinds also subclass the built-in they refine (``ValueError``, ``LookupError``), so code that
asked "is this a bad value?" before the tree existed still gets a yes.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypedDict


class MaasError(Exception):
    """Something a user can fix; the message says what was wrong and what was expected."""

    kind: ClassVar[str] = "error"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self._status = status

    @property
    def status(self) -> int:
        """The HTTP status: the kind's, unless this instance names a finer one (401, 413, ...)."""
        return self._status or self.http_status

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(MaasError, ValueError):
    """A configuration (YAML, ``--set``, Serve ``args``/``user_config``) is wrong."""

    kind, http_status, exit_code = "config", 400, 2


class DataError(MaasError, ValueError):
    """The data a user pointed at cannot be used; the message names the file and column."""

    kind, http_status, exit_code = "data", 400, 2


class ModelError(MaasError, ValueError):
    """The model config does not fit the data or the cluster (a CNN on tabular rows, too many
    workers for a fixed cluster, ...)."""

    kind, http_status, exit_code = "model", 422, 2


class RegistryError(MaasError, LookupError):
    """A model, version or label is missing or unusable; the message says what exists."""

    kind, http_status, exit_code = "registry", 404, 1


class IntegrityError(RegistryError):
    """A version's files do not match what was recorded (or signed) when it was published."""

    kind, http_status, exit_code = "integrity", 409, 1


class StorageError(RegistryError):
    """The registry's storage refused a write: full, read-only, or not ours to write. Nothing was
    published; the message names the path and what to do."""

    kind, http_status, exit_code = "storage", 507, 1


class RequestError(MaasError, ValueError):
    """A client's request is wrong: 400 unless the instance says 401, 403, 404, 413, ..."""

    kind, http_status, exit_code = "request", 400, 2


class OverloadError(MaasError):
    """A model's queue is full: come back after ``retry_after_s``."""

    kind, http_status, exit_code = "overload", 503, 1

    def __init__(self, message: str, *, retry_after_s: float | None = None, status: int | None = None):
        super().__init__(message, status=status)
        self.retry_after_s = retry_after_s


class RateLimitError(OverloadError):
    """A caller is over its key's request rate: come back after ``retry_after_s``."""

    kind, http_status, exit_code = "rate_limit", 429, 1


class UnavailableError(OverloadError):
    """A model cannot serve right now (no version of it loads); other models are unaffected."""

    kind, http_status, exit_code = "unavailable", 503, 1


class ClusterError(MaasError):
    """The Ray cluster or its dashboard cannot be reached at the address given."""

    kind, http_status, exit_code = "cluster", 503, 1


class InterruptedRunError(MaasError):
    """A run or sweep stopped on Ctrl-C / SIGTERM before it finished; ``--resume`` continues it."""

    kind, http_status, exit_code = "interrupted", 503, 130


# ---------------------------------------------------------------------------------------------
# Errors as data across a Serve handle.
#
# A model hosted in its own deployment answers the ingress through a DeploymentHandle. An
# exception raised there reaches the caller wrapped in a RayTaskError, with the replica's
# traceback logged as if it were a crash, and every bad request a client sends would look like a
# server fault in the replica's log. So errors a user caused cross the handle as this one typed
# shape, and the caller turns them back into the same MaasError kind.

_KINDS: dict[str, type[MaasError]] = {cls.kind: cls for cls in (
    MaasError, ConfigError, DataError, ModelError, RegistryError, IntegrityError, StorageError,
    RequestError,
    OverloadError, RateLimitError, UnavailableError, ClusterError, InterruptedRunError)}


class ErrorReply(TypedDict):
    error: str
    status: int
    kind: str


def error_reply(exc: MaasError) -> ErrorReply:
    return {"error": str(exc), "status": exc.status, "kind": exc.kind}


def is_error_reply(reply: Any) -> bool:
    return isinstance(reply, dict) and "error" in reply and "kind" in reply


def raise_if_error(reply: Any) -> Any:
    """Return ``reply`` unless it is an ``ErrorReply``; then raise the error it describes."""
    if is_error_reply(reply):
        raise _KINDS.get(reply["kind"], MaasError)(reply["error"], status=reply["status"])
    return reply
