"""The exceptions every backend raises, so `app/` maps one family to problem responses.

Each error names what failed (the endpoint, the model file, the parameter) and what to do about it;
`attempts` says how many requests were spent before giving up, so callers can account for them.
"""

from __future__ import annotations


class GeneratorError(Exception):
    """Base class of everything a generator backend raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        endpoint: str | None = None,
        status: int | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.endpoint = endpoint
        self.status = status
        self.attempts = attempts


class UnknownBackend(GeneratorError):
    """No backend is registered under the requested name."""


class BackendNotInstalled(GeneratorError):
    """A package or model file the backend needs is missing; the message says what to install."""


class UnsupportedRequest(GeneratorError):
    """The request cannot work on this backend or model (chat on a completion-only model, a
    prompt longer than the context window); retrying will not help."""


class RequestRejected(GeneratorError):
    """The server refused the request with a 4xx status that retrying cannot fix (bad key,
    unknown model, invalid parameter); the message carries the server's own error text."""


class BadResponse(GeneratorError):
    """The server answered 2xx with a body we cannot use: not JSON, truncated, or no choices."""


class BackendUnavailable(GeneratorError):
    """The server could not be reached or kept failing (connection refused, timeouts, 5xx)."""


class RetryBudgetExhausted(BackendUnavailable):
    """Every allowed attempt failed with a retryable error; the message names the last one."""
