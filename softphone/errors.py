"""One error hierarchy for the whole package, rooted in :class:`SoftphoneError`.

Callers catch the area they care about (``SipError``, ``PlatformError``, ...)
or everything with ``SoftphoneError``.  Messages name the field or message at
fault and never contain a secret: values that might be secret are passed
through :func:`softphone.log.redact` before they reach an exception.
"""

from __future__ import annotations

from dataclasses import dataclass


class SoftphoneError(Exception):
    """Base of every error raised on purpose by softphone."""


# --- parameters ---------------------------------------------------------------


@dataclass(frozen=True)
class FieldError:
    """One problem with one launch parameter."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class ParameterError(SoftphoneError, ValueError):
    """Launch parameters are invalid; carries every bad field at once."""

    def __init__(self, errors: list[FieldError]):
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{len(self.errors)} invalid launch parameter(s):\n{lines}")


class ConfigurationError(SoftphoneError, ValueError):
    """A configuration value (not a launch parameter) is unusable."""


# --- SIP ------------------------------------------------------------------------


class SipError(SoftphoneError):
    """Anything that went wrong in the SIP layer."""


class SipParseError(SipError, ValueError):
    """Bytes from the network are not a SIP message; ``reason`` says why.

    ``partial`` is the request as far as it parsed when enough of it (request
    line and a Via) is there to answer 400 with the reason.
    """

    def __init__(self, reason: str, partial: object = None):
        self.reason = reason
        self.partial = partial
        super().__init__(reason)


class TransportError(SipError, ConnectionError):
    """The SIP WebSocket is not connected, or sending on it failed."""


class TransactionTimeoutError(SipError, TimeoutError):
    """A SIP transaction got no final response in time (timer B/F)."""


class AuthenticationError(SipError):
    """Digest authentication failed (wrong credentials, unsupported algorithm)."""


class RegistrationError(SipError):
    """REGISTER failed with a final response or timed out."""


class SessionError(SipError):
    """An INVITE session could not be set up or changed."""

    def __init__(self, message: str, status_code: int | None = None):
        self.status_code = status_code
        super().__init__(message)


# --- media ------------------------------------------------------------------------


class MediaError(SoftphoneError):
    """WebRTC or audio file handling failed."""


class IceError(MediaError):
    """ICE gathering or connectivity failed (TURN unreachable, timeout)."""


class AudioFileError(MediaError):
    """An audio file could not be opened, decoded or written."""


class CodecError(MediaError, ValueError):
    """An audio codec name is unknown or not supported by the lean media path."""


class AiortcCompatibilityError(MediaError):
    """The installed aiortc lacks internals a media hook relies on (version mismatch)."""


class DescriptionError(MediaError, SipError):
    """The media layer cannot make or use a session description (bad SDP, no common
    codec, closed handler).  Also a SipError, so sessions answer it like any
    unusable description (488) without knowing about media."""


class IceGatheringError(IceError, DescriptionError):
    """No usable local description: ICE gathering timed out or got no relay candidate."""


# --- platform REST API ----------------------------------------------------------


class PlatformError(SoftphoneError):
    """An OmniSense REST call failed; carries HTTP status and server message."""

    def __init__(self, message: str, status: int | None = None, detail: object = None):
        self.status = status
        self.detail = detail
        prefix = f"HTTP {status}: " if status is not None else ""
        super().__init__(prefix + message)
        self.message = message
        #: True when the request may have reached the server (lost after sending, no answer in
        #: time): its outcome is unknown, not failed
        self.maybe_processed = False


class PlatformAuthError(PlatformError):
    """401: system key or user token rejected."""


class OfficeHoursError(PlatformError):
    """403: the API cannot run during the office-hours time condition."""


class PlatformValidationError(PlatformError):
    """400: the request was rejected; ``ids`` lists offending values if any."""

    def __init__(self, message: str, status: int | None = 400, detail: object = None,
                 ids: list | None = None):
        super().__init__(message, status, detail)
        self.ids = list(ids or [])


class PlatformNotFoundError(PlatformError):
    """404: no such user, call or resource."""


class PlatformServerError(PlatformError):
    """5xx or an unreadable answer from the server."""


class PlatformTimeoutError(PlatformError, TimeoutError):
    """The server did not answer in time."""


class PlatformConflictError(PlatformError):
    """409: the request does not fit the current state (e.g. login while logged in)."""


class PlatformConnectionError(PlatformError, ConnectionError):
    """The server could not be reached, or its TLS certificate was not trusted."""


# --- agent / lab ------------------------------------------------------------------


class AgentError(SoftphoneError):
    """An agent session could not reach or keep its goal state."""


class SessionExpiredError(AgentError):
    """The session reached ``expire_date``."""


class ExpectationError(AgentError, AssertionError):
    """A test expectation (``await call.expect_tone(440)``, ...) was not met in time.

    An :class:`AssertionError`, so pytest reports it as a failed assertion; the
    message says what was expected and what was observed instead (frequency and
    level over time, digits seen, the call's SIP ladder).
    """


class LabError(SoftphoneError):
    """The local lab could not start or serve."""


class LabApiError(LabError):
    """An answer of the lab's REST API other than success: HTTP ``status`` and ``detail``."""

    def __init__(self, status: int, detail: str):
        self.status = status
        self.detail = detail
        super().__init__(f"HTTP {status}: {detail}")


class LeadRequestError(LabError):
    """A rejected lead archive request (400): the contract's message and offending ids."""

    def __init__(self, message: str, lead_ids: list | None = None):
        self.message = message
        self.lead_ids = list(lead_ids or [])
        super().__init__(message)

    def as_json(self) -> dict:
        return {"message": self.message, "lead_errors": len(self.lead_ids), "lead_ids": self.lead_ids}


class TelephonyError(LabError):
    """The lab's telephony refused an action (extension not registered, call gone)."""
