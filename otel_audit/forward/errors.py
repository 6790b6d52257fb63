"""What a destination's ``send`` raises, and the forwarder's own errors.

::

    AuditError
     └── ForwardError                 the forwarder cannot go on (configuration, lease)
          ├── LeaseLostError          another forwarder took this destination's lease
          └── SendError               one send did not get an acknowledgement
               ├── RetryableError     try the same batch again later (Retry-After)
               └── PermanentError     the destination refuses this batch for good
"""

from __future__ import annotations

from ..errors import AuditError

__all__ = ["ForwardError", "LeaseLostError", "PermanentError", "RetryableError", "SendError"]


class ForwardError(AuditError):
    """The forwarder cannot go on."""


class LeaseLostError(ForwardError):
    """Another forwarder holds this destination now: stop without moving the cursor."""


class SendError(ForwardError):
    """A send was not acknowledged."""


class RetryableError(SendError):
    """Send the same batch again later, no earlier than ``retry_after`` seconds if set."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(SendError):
    """The destination refuses the batch for good (a 4xx other than 408/429)."""
