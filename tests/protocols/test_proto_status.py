"""Status words: every family maps to its own exception, distinct from ProtocolError."""

from __future__ import annotations

import pytest

import protocols
from protocols import (
    ApplicationBlocked,
    ApplicationLocked,
    AuthenticationFailed,
    CardStatusError,
    FileNotFound,
    InsufficientBalance,
    MacInvalid,
    MacTacUnavailable,
    ProtocolError,
    RecordNotFound,
    ResponseApdu,
    SecurityStatusNotSatisfied,
    UnknownStatus,
    describe,
    raise_for_status,
)
from protocols.status import (
    AuthenticationBlocked,
    ConditionsNotSatisfied,
    CounterExhausted,
    KeyNotSupported,
    SecureMessagingError,
    WrongLength,
)


@pytest.mark.parametrize(
    ("sw", "error"),
    [
        (0x6A82, FileNotFound),
        (0x6A83, RecordNotFound),
        (0x6283, ApplicationBlocked),
        (0x6A81, ApplicationBlocked),
        (0x9303, ApplicationLocked),
        (0x6982, SecurityStatusNotSatisfied),
        (0x6983, AuthenticationBlocked),
        (0x6985, ConditionsNotSatisfied),
        (0x6988, SecureMessagingError),
        (0x63C3, AuthenticationFailed),
        (0x9302, MacInvalid),
        (0x9401, InsufficientBalance),
        (0x9402, CounterExhausted),
        (0x9403, KeyNotSupported),
        (0x9406, MacTacUnavailable),
        (0x6C10, WrongLength),
        (0x1234, UnknownStatus),
    ],
)
def test_status_family(sw: int, error: type[CardStatusError]) -> None:
    with pytest.raises(error) as info:
        raise_for_status(sw, "TEST")
    assert type(info.value) is error
    assert info.value.sw == sw
    assert f"{sw:04X}" in str(info.value) and "TEST" in str(info.value)
    assert not isinstance(info.value, ProtocolError)


def test_tries_left_from_63cx() -> None:
    with pytest.raises(AuthenticationFailed) as info:
        ResponseApdu(b"", 0x63C2).check("VERIFY")
    assert info.value.tries_left == 2


def test_every_status_word_is_described() -> None:
    for sw in range(0x10000):
        info = describe(sw)
        assert info.meaning
        assert info.ok == (sw == 0x9000)
    raise_for_status(0x9000, "ok")


def test_both_families_importable_from_package() -> None:
    assert issubclass(protocols.InsufficientBalance, protocols.CardStatusError)
    assert issubclass(protocols.TruncatedData, protocols.ProtocolError)
    assert not issubclass(protocols.CardStatusError, protocols.ProtocolError)
