"""Pure card protocol code for the third-generation social security card: bytes in, typed records out.

Nothing here does I/O. Card conversations are functions over `Transmit` (command APDU bytes
in, response bytes out), so they run the same over any reader, a virtual card, or a dump.

Two error families leave this package:
- `ProtocolError` (protocols.errors): bytes that do not fit a structure, naming structure,
  field and byte offset;
- `CardStatusError` (protocols.status): the card answered with a refusal status word.
"""

from protocols.apdu import CommandApdu, ResponseApdu
from protocols.errors import (
    BadChecksum,
    BadEncoding,
    BadLength,
    BadValue,
    CannotBuild,
    ExchangeFailed,
    ProtocolError,
    TrailingData,
    TruncatedData,
    UnexpectedTag,
)
from protocols.exchange import Transmit, command, exchange
from protocols.status import (
    ApplicationBlocked,
    ApplicationLocked,
    AuthenticationBlocked,
    AuthenticationFailed,
    CardLeftField,
    CardStatusError,
    ClassNotSupported,
    CommandNotAllowed,
    ConditionsNotSatisfied,
    CounterExhausted,
    FileNotFound,
    InstructionNotSupported,
    InsufficientBalance,
    KeyNotSupported,
    MacInvalid,
    MacTacUnavailable,
    MemoryFailure,
    RecordNotFound,
    SecureMessagingError,
    SecurityStatusNotSatisfied,
    StatusInfo,
    UnknownStatus,
    WarningStatus,
    WrongLength,
    WrongParameters,
    describe,
    raise_for_status,
)

__all__ = [
    "ApplicationBlocked",
    "ApplicationLocked",
    "AuthenticationBlocked",
    "AuthenticationFailed",
    "BadChecksum",
    "BadEncoding",
    "BadLength",
    "BadValue",
    "CannotBuild",
    "CardLeftField",
    "CardStatusError",
    "ClassNotSupported",
    "CommandApdu",
    "CommandNotAllowed",
    "ConditionsNotSatisfied",
    "CounterExhausted",
    "ExchangeFailed",
    "FileNotFound",
    "InstructionNotSupported",
    "InsufficientBalance",
    "KeyNotSupported",
    "MacInvalid",
    "MacTacUnavailable",
    "MemoryFailure",
    "ProtocolError",
    "RecordNotFound",
    "ResponseApdu",
    "SecureMessagingError",
    "SecurityStatusNotSatisfied",
    "StatusInfo",
    "TrailingData",
    "Transmit",
    "TruncatedData",
    "UnexpectedTag",
    "UnknownStatus",
    "WarningStatus",
    "WrongLength",
    "WrongParameters",
    "command",
    "describe",
    "exchange",
    "raise_for_status",
]
