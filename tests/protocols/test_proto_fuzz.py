"""Every parser against mutations of valid encodings: a result, or a ProtocolError, nothing else.

Mutations are flipped, cut, extended, re-tagged, inserted and deleted bytes of encodings
built from random valid values. A parse that succeeds on a mutated input must still
round-trip exactly where the structure has a builder, so lenient parsing never loses bytes.

Default run: for every parser, 200 Hypothesis examples x 50 inputs each (the valid encoding
and 49 mutations derived from a drawn seed) = 10,000 inputs per parser, asserted by count.
`-m slow` runs the same parsers with 10,000 Hypothesis examples each, one mutation per
example (about ten minutes on two cores).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from protocols import ssse, ssse_auth
from protocols import tunion as tu
from protocols.apdu import CommandApdu, ResponseApdu
from protocols.decode import KINDS, decode, parse_hex
from protocols.ecash import AMOUNT_TAGS, build_amount, parse_amount
from protocols.errors import ProtocolError
from protocols.fci import DirectoryEntry, Fci, parse_fci
from protocols.layout import Layout
from protocols.tlv import Tlv, build_tlvs, parse_tlvs
from tests.protocols.proto_strategies import mutate_batch, mutations, valid_item, valid_layout

INPUTS_PER_PARSER = int(os.environ.get("FUZZ_INPUTS", "10000"))
BATCH = 50
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
DEFAULT = settings(
    max_examples=-(-INPUTS_PER_PARSER // BATCH), deadline=None, database=None, suppress_health_check=_HEALTH
)
LONG = settings(max_examples=INPUTS_PER_PARSER, deadline=None, database=None, suppress_health_check=_HEALTH)


@dataclass(frozen=True)
class Parser:
    """A parser under test: how to parse, how to build back (None: no exact builder), valid inputs."""

    name: str
    parse: Callable[[bytes], Any]
    build: Callable[[Any], bytes] | None
    valid: st.SearchStrategy[bytes]


def check(parser: Parser, raw: bytes) -> None:
    try:
        value = parser.parse(raw)
    except ProtocolError as exc:
        assert exc.structure and exc.field, exc
        assert 0 <= exc.offset <= len(raw) + 2, exc
        return
    if parser.build is not None:
        assert parser.build(value) == raw


LAYOUTS: list[Layout[Any]] = [
    obj for module in (tu, ssse_auth) for obj in vars(module).values() if isinstance(obj, Layout)
]

_COMMANDS = st.builds(
    CommandApdu,
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=40),
    st.none() | st.integers(1, 256),
).map(CommandApdu.to_bytes)

_TAGS = st.sampled_from([0x4F, 0x50, 0x57, 0x5A, 0x84, 0x87, 0x9F08, 0x9F0C, 0x9F79, 0xDF61, 0x9F8101])
_TLVS = st.recursive(
    st.builds(Tlv, _TAGS, st.binary(max_size=140)),
    lambda inner: st.builds(
        lambda tag, kids: Tlv.of(tag, *kids),
        st.sampled_from([0x6F, 0xA5, 0xBF0C, 0x61, 0x70]),
        st.lists(inner, max_size=3),
    ),
    max_leaves=6,
)

_LABELS = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=16)
_FCIS = st.builds(
    lambda name, label, prio, version, issuer, entries: Fci.create(
        name, label=label, priority=prio, app_version=version, issuer_data=issuer, directory=tuple(entries)
    ).to_bytes(),
    st.binary(min_size=1, max_size=16),
    st.none() | _LABELS,
    st.none() | st.integers(0, 255),
    st.none() | st.binary(min_size=2, max_size=2),
    st.none() | st.binary(max_size=30) | st.just(bytes.fromhex("860103")),
    st.lists(
        st.builds(
            DirectoryEntry.create,
            st.binary(min_size=5, max_size=16),
            st.none() | _LABELS,
            st.none() | st.integers(0, 255),
        ),
        max_size=3,
    ),
)


def _fci_and_accessors(raw: bytes) -> Fci:
    """Parse, then touch every accessor: a validated FCI must never fail afterwards."""
    fci = parse_fci(raw)
    assert fci.df_name is not None
    _ = (fci.label, fci.priority, fci.app_version, fci.issuer_data)
    for entry in fci.directory:
        _ = (entry.aid, entry.label, entry.priority)
    return fci


def _capp_valid() -> st.SearchStrategy[bytes]:
    layout = tu.CAPP_RECORD_LAYOUT
    return valid_layout(layout).map(lambda raw: layout.build(layout.parse(raw).sealed()))


_ANY_VALID = st.one_of(
    *(valid_layout(layout) for layout in LAYOUTS), valid_item(ssse.EF05), valid_item(ssse.EF06), _FCIS
)


_KIND_NAMES = sorted(KINDS)


def _decode_some_kind(raw: bytes) -> None:
    """One registered kind per input (chosen from its bytes), masked or revealed.

    Each kind's own parser is fuzzed above with its own 10,000 inputs; this checks that the
    registry adds nothing that escapes (hex, JSON conversion, status-word splitting).
    """
    pick = zlib.crc32(raw)
    kind = _KIND_NAMES[pick % len(_KIND_NAMES)]
    try:
        decode(kind, raw, reveal=bool(pick & 0x100))
    except ProtocolError as exc:
        assert exc.structure and exc.field and exc.offset >= 0


PARSERS: list[Parser] = [
    *(Parser(layout.name, layout.parse, layout.build, valid_layout(layout)) for layout in LAYOUTS),
    Parser(
        "T-Union 0x1A with CRC",
        lambda d: tu.parse_capp_record(d, verify_crc=True),
        tu.CAPP_RECORD_LAYOUT.build,
        _capp_valid(),
    ),
    Parser(
        "EF05 record", lambda d: ssse.parse_item_record(d, ssse.EF05), ssse.build_item_record, valid_item(ssse.EF05)
    ),
    Parser(
        "EF06 record", lambda d: ssse.parse_item_record(d, ssse.EF06), ssse.build_item_record, valid_item(ssse.EF06)
    ),
    Parser("command APDU", CommandApdu.parse, CommandApdu.to_bytes, _COMMANDS),
    Parser(
        "response APDU",
        ResponseApdu.parse,
        ResponseApdu.to_bytes,
        st.binary(max_size=20).map(lambda d: d + b"\x90\x00"),
    ),
    Parser("BER-TLV", parse_tlvs, None, st.lists(_TLVS, min_size=1, max_size=3).map(build_tlvs)),
    Parser("FCI", _fci_and_accessors, None, _FCIS),
    Parser("SSSE algorithm id", lambda d: ssse.algorithm_id(parse_fci(d)), None, _FCIS),
    Parser(
        "e-cash GET DATA",
        parse_amount,
        lambda parsed: build_amount(*parsed),
        st.builds(build_amount, st.sampled_from(AMOUNT_TAGS), st.integers(0, 10**12 - 1)),
    ),
    Parser("decode registry", _decode_some_kind, None, _ANY_VALID),
    Parser(
        "hex input",
        lambda raw: parse_hex(raw.decode("latin-1")),
        None,
        st.text(alphabet="0123456789abcdefABCDEF :\n", max_size=40).map(lambda t: t.encode("latin-1")),
    ),
]


def test_every_structure_is_fuzzed() -> None:
    names = {parser.name for parser in PARSERS}
    for required in (
        "T-Union 0x15",
        "T-Union 0x16",
        "T-Union 0x17",
        "T-Union 0x18",
        "T-Union 0x1E",
        "T-Union 0x1A",
        "GET BALANCE answer",
        "INITIALIZE FOR PURCHASE answer",
        "DEBIT FOR PURCHASE answer",
        "GET TRANSACTION PROOF answer",
        "MAC1 input",
        "MAC1 answer",
        "PSAM VERIFY CARD data",
        "PSAM EXTERNAL CRYPTOGRAM data",
        "EF05 record",
        "EF06 record",
        "FCI",
        "BER-TLV",
    ):
        assert required in names, required


@pytest.mark.parametrize("parser", PARSERS, ids=lambda parser: parser.name)
def test_parser_mutations(parser: Parser) -> None:
    checked = 0

    @DEFAULT
    @given(parser.valid, st.integers(0, 2**64 - 1))
    def run(raw: bytes, seed: int) -> None:
        nonlocal checked
        for candidate in mutate_batch(raw, seed, BATCH):
            note(f"input {candidate.hex()}")
            check(parser, candidate)
            checked += 1

    run()
    assert checked >= INPUTS_PER_PARSER


@pytest.mark.slow
@pytest.mark.parametrize("parser", PARSERS, ids=lambda parser: parser.name)
def test_parser_mutations_one_per_example(parser: Parser, request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("long run, selected with -m slow")

    @LONG
    @given(mutations(parser.valid))
    def run(raw: bytes) -> None:
        check(parser, raw)

    run()
