"""The exception hierarchy of wsgateway.

Every error the gateway raises on purpose derives from :class:`GatewayError` and carries
the data a reply needs. Each branch declares how it reaches the outside world:

    GatewayError
     ├── SettingsError            bad configuration; the CLI exits with status 2
     ├── CommandError             a ``wsgateway`` client command could not do its job
     │    ├── UsageError                  exit 2: the command was asked for something it cannot do
     │    └── CommandFailed               exit 1: refused or unreachable at run time
     ├── Rejected                 a WebSocket upgrade refused before the handshake (HTTP status)
     │    ├── UnknownChannel              404
     │    ├── Unauthorized                401
     │    ├── ForbiddenOrigin             403
     │    ├── ConnectionRateLimited       429 + Retry-After (one address, per minute)
     │    │    └── HandshakeRateLimited   429 + jittered Retry-After (the channel, per second)
     │    ├── TooManyConnectionsFromAddress 429
     │    ├── ChannelFull                 503
     │    └── Draining                    503
     ├── PublishError             a bad POST /api/publish or /api/drain (HTTP status, field)
     │    ├── PublishUnauthorized         401
     │    ├── PublishForbidden            403
     │    │    ├── PublishForbiddenOrigin 403 (loopback rule: a browser page from elsewhere)
     │    │    └── PublishForbiddenHost   403 (loopback rule: Host not local, DNS rebinding)
     │    ├── PublishUnsupportedMediaType 415 (loopback rule: not application/json)
     │    ├── UnsupportedEncoding         415 (a compressed body, refused unread)
     │    └── BrokerUnavailable           503 + Retry-After
     ├── ClientError              a bad client frame: an ``error`` reply, the connection stays
     │    ├── BadJson, BadMessage, UnknownType, InvalidTopic, TooManyTopics,
     │    └── ForbiddenTopic, RateLimited, Unavailable
     └── CloseConnection          the connection is closed with a WebSocket close code
          ├── UnsupportedData             1003
          ├── PolicyViolation             1008
          ├── SlowConsumer                1013
          ├── ServerShutdown              1001
          └── ServiceRestart              1012 (a drain: reconnect, to another node)

Exactly one place turns them into HTTP answers and close frames (``web.py``) and one place
into exit codes (``cli.py``).
"""

from __future__ import annotations

from typing import ClassVar


class GatewayError(Exception):
    """Base class of every error wsgateway raises on purpose."""


class SettingsError(GatewayError):
    """A setting has a value that is not allowed. The message names setting, value, allowed."""

    def __init__(self, setting: str, value: object, allowed: str) -> None:
        self.setting = setting
        self.value = value
        self.allowed = allowed
        super().__init__(f"bad setting {setting}={value!r}: {allowed}")


# -- the command line: what a client command reports (cli.py turns them into exit codes) ------


#: Exit statuses of the ``wsgateway`` command and its processes: success; a failure at run
#: time (CommandFailed, a server that could not listen); bad usage or a bad setting
#: (UsageError, SettingsError).
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CommandError(GatewayError):
    """A ``wsgateway`` command could not do its job; the message says why, in one line."""


class UsageError(CommandError):
    """The command was asked for something it cannot do as given (exit 2), e.g. ``token``
    without a configured ``jwt_secret``, or ``config init`` over an existing file."""


class CommandFailed(CommandError):
    """The command ran and failed (exit 1): the gateway refused or could not be reached."""


# -- admission: refused before the WebSocket upgrade ------------------------------------------


class Rejected(GatewayError):
    """A WebSocket upgrade refused before the handshake."""

    status: ClassVar[int] = 400
    #: closed set used as the ``reason`` label of wsgateway_connections_rejected_total
    reason: ClassVar[str] = "bad_handshake"
    #: the ``limit`` label of wsgateway_rate_limit_hits_total, for a rate-limit refusal
    limit: ClassVar[str | None] = None
    retry_after: int | None = None

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class UnknownChannel(Rejected):
    status = 404
    reason = "unknown_channel"


class Unauthorized(Rejected):
    status = 401
    reason = "unauthorized"


class ForbiddenOrigin(Rejected):
    status = 403
    reason = "forbidden_origin"


class ConnectionRateLimited(Rejected):
    """One client address over ``connections_per_minute``."""

    status = 429
    reason = "rate_limited"
    limit = "connections_per_minute"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HandshakeRateLimited(ConnectionRateLimited):
    """The channel over ``handshakes_per_second``, whoever asks."""

    reason = "handshake_rate"
    limit = "handshakes_per_second"


class TooManyConnectionsFromAddress(Rejected):
    status = 429
    reason = "ip_limit"


class ChannelFull(Rejected):
    status = 503
    reason = "capacity"


class Draining(Rejected):
    status = 503
    reason = "draining"


# -- publishing -------------------------------------------------------------------------------


class PublishError(GatewayError):
    """A publish request that cannot be accepted; ``field`` names the offending part."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    #: seconds for a Retry-After header, when trying again later may succeed
    retry_after: ClassVar[int | None] = None

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class PublishUnauthorized(PublishError):
    status = 401
    code = "unauthorized"


class PublishForbidden(PublishError):
    status = 403
    code = "forbidden"


class PublishForbiddenOrigin(PublishForbidden):
    code = "forbidden_origin"


class PublishForbiddenHost(PublishForbidden):
    code = "forbidden_host"


class PublishUnsupportedMediaType(PublishError):
    status = 415
    code = "unsupported_media_type"


class UnsupportedEncoding(PublishError):
    """A compressed body (Content-Encoding): refused unread, so no one can make the gateway
    inflate a small body into a large one."""

    status = 415
    code = "unsupported_encoding"


class BrokerUnavailable(PublishError):
    status = 503
    code = "broker_unavailable"
    retry_after = 5


# -- client frames: an error reply, the connection stays open ---------------------------------


class ClientError(GatewayError):
    """A bad client frame. Answered with ``{"type": "error", "code": ...}``."""

    code: ClassVar[str] = "bad_message"
    #: seconds after which sending the frame again may succeed (``retry_after`` in the reply)
    retry_after: float | None = None

    def __init__(self, message: str, request_id: int | str | None = None) -> None:
        self.message = message
        self.request_id = request_id
        super().__init__(message)


class BadJson(ClientError):
    code = "bad_json"


class BadMessage(ClientError):
    code = "bad_message"


class UnknownType(ClientError):
    code = "unknown_type"


class InvalidTopic(ClientError):
    code = "invalid_topic"


class TooManyTopics(ClientError):
    code = "too_many_topics"


class ForbiddenTopic(ClientError):
    code = "forbidden_topic"


class RateLimited(ClientError):
    code = "rate_limited"


class Unavailable(ClientError):
    """The broker could not answer in time (a subscribe needs its positions): nothing
    changed, the request may be sent again."""

    code = "unavailable"


# -- closing a connection ---------------------------------------------------------------------


class CloseConnection(GatewayError):
    """The connection must be closed with ``close_code``; ``reason`` labels the disconnect."""

    close_code: ClassVar[int] = 1011
    reason: ClassVar[str] = "internal_error"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class UnsupportedData(CloseConnection):
    close_code = 1003
    reason = "binary_frame"


class PolicyViolation(CloseConnection):
    close_code = 1008
    reason = "policy_violation"


class SlowConsumer(CloseConnection):
    close_code = 1013
    reason = "slow_consumer"


class ServerShutdown(CloseConnection):
    close_code = 1001
    reason = "shutdown"


class ServiceRestart(CloseConnection):
    """The node is draining (SIGTERM, ``POST /api/drain``): come back, through the load
    balancer, to another node (RFC 6455 1012, "service restart")."""

    close_code = 1012
    reason = "draining"
