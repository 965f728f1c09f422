"""Malformed-data errors: what a parser raises when bytes do not fit a wire structure.

Every parser in `protocols` meets truncated, overlong, re-tagged and mis-encoded input from
real cards and noisy links. Whatever goes wrong, it surfaces as one `ProtocolError` that
names the structure, the field and the byte offset, so that a field engineer reading a log
line knows where to look without a traceback, and so that callers need a single `except`.

Card *status words* (the card answered, but refused) are a separate family, see
`protocols.status.CardStatusError`: a refusal is not malformed data. A third family is
`TransportError`: no answer at all, because the link to the card broke.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Bytes that do not fit the structure they were parsed as (or a value that cannot be built)."""

    def __init__(self, structure: str, field: str, offset: int, reason: str) -> None:
        self.structure = structure
        self.field = field
        self.offset = offset
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.structure}: field {self.field} at byte {self.offset}: {self.reason}"

    def __reduce__(self) -> tuple[type[ProtocolError], tuple[str, str, int, str]]:
        return (type(self), (self.structure, self.field, self.offset, self.reason))


class TruncatedData(ProtocolError):
    """The input ends before the field is complete."""


class TrailingData(ProtocolError):
    """Bytes follow the end of the structure (an overlong answer)."""


class UnexpectedTag(ProtocolError):
    """A tag (TLV tag, record identifier, template) other than the one the structure requires."""


class BadLength(ProtocolError):
    """A length byte that disagrees with the data or with the length the structure allows."""


class BadEncoding(ProtocolError):
    """A field whose bytes are not valid in its encoding: non-BCD nibbles, non-ASCII, non-GBK."""


class BadValue(ProtocolError):
    """Well-encoded bytes holding an impossible value (month 13, unknown enumeration)."""


class BadChecksum(ProtocolError):
    """A check value (CRC32 of a CAPP record) that does not match the data it protects."""


class CannotBuild(ProtocolError):
    """A value handed to a builder that the wire format cannot carry (too long, out of range)."""


class ExchangeFailed(ProtocolError):
    """The APDU exchange itself broke its rules: no status word, endless 61xx chain."""


class TransportError(Exception):
    """The link to the card broke: it left the field, or its answer never came.

    Card conversations here never do I/O, so they cannot know the reader's errors; the
    readers' own errors for a lost card and a missed deadline subclass this one, and a
    conversation that must tell "no answer" from "a wrong answer" (the purchase: an
    unanswered DEBIT may have debited) catches this class alone.
    """
