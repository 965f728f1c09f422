"""Parsing cost: a whole card image from a stored dump, and each wire structure on its own.

No I/O: the conversation of `protocols.image.read_card` with the virtual 'sichuan' card
and the demo PSAM is recorded once (a `Dump` per device, written out as JSON and read back,
as stored dumps are), then `read_card` runs again and again over `protocols.image.replay`
of those dumps. The figure is everything the terminal does with the bytes of a full read:
building each command, matching it to its answer, checking status words, parsing every
structure into typed records.

Per structure, each fixed layout (`protocols.layout.Layout`) parses a valid vector: the
bytes it was given during a real read, a CAPP purchase, its transaction proof and a read of
the files it wrote, between the virtual card and PSAM (captured as they passed through
`Layout.parse`). The TLV structures without a fixed
layout (FCIs, SSSE item records, e-cash amounts, command APDUs) parse vectors taken from
the same dump.
"""

from __future__ import annotations

import datetime as dt
import importlib
import pkgutil
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import protocols
from bench.report import percentiles, write
from protocols.apdu import CommandApdu
from protocols.ecash import parse_amount
from protocols.exchange import Transmit
from protocols.fci import parse_fci
from protocols.image import Dump, Recorder, read_card, replay
from protocols.layout import Layout
from protocols.purchase import CappUpdate, PurchaseRequest, PurchaseResult, Recovery, purchase, recover
from protocols.ssse import EF05, parse_item_record
from protocols.tunion import PROCESS_RECORD_LAYOUT, SFI_PROCESS, ProcessRecord
from protocols.tunion_read import read_tunion
from sscard_sim.card import VirtualCard
from sscard_sim.profile import load_card_profile, load_psam_profile
from sscard_sim.psam import VirtualPsam

IMAGE_READS = 2000
BATCH = 200
BATCHES = 25


class BenchFailure(RuntimeError):
    """The recorded conversation did not give what the benchmark needs."""


def all_layouts() -> dict[str, Layout[Any]]:
    """Every Layout declared at module level in the protocols package, by structure name."""
    found: dict[str, Layout[Any]] = {}
    for info in pkgutil.iter_modules(protocols.__path__):
        module = importlib.import_module(f"protocols.{info.name}")
        for value in vars(module).values():
            if isinstance(value, Layout):
                found[value.name] = value
    return found


@contextmanager
def _capturing_layouts() -> Iterator[dict[str, bytes]]:
    """Keep the first input each Layout parses successfully while the block runs."""
    vectors: dict[str, bytes] = {}
    original = Layout.parse

    def parse(self: Layout[Any], data: bytes) -> Any:
        record = original(self, data)
        vectors.setdefault(self.name, bytes(data))
        return record

    Layout.parse = parse  # type: ignore[method-assign]
    try:
        yield vectors
    finally:
        Layout.parse = original  # type: ignore[method-assign]


def _devices() -> tuple[VirtualCard, VirtualPsam]:
    card = VirtualCard(load_card_profile("sichuan"), random=random.Random(1).randbytes)
    psam = VirtualPsam(load_psam_profile("demo-psam"), None, random.Random(2).randbytes)
    card.power_on()
    psam.power_on()
    return card, psam


def _purchase_and_proof() -> None:
    """A CAPP purchase writing a 0x1E record, its transaction proof, and the files read back."""
    card, psam = _devices()
    when = dt.datetime(2025, 1, 1, 8, 0, 0)
    image = read_card(card.transmit, psam.transmit, applications=("tunion",))
    if image.tunion is None:
        raise BenchFailure("the virtual card has no T-Union application")
    public = image.tunion.public
    ride = ProcessRecord(
        transaction_type=0x06,
        terminal_id=bytes(8),
        industry=0x02,
        line_station=bytes(7),
        amount=200,
        balance_after=image.tunion.balance - 200,
        time=when,
        city_code=public.issuer_id[2:4],
        acquirer=public.issuer_id,
        reserved=bytes(6),
    )
    request = PurchaseRequest(
        amount=200, time=when, updates=(CappUpdate(SFI_PROCESS, 0x00, PROCESS_RECORD_LAYOUT.build(ride)),)
    )
    result = purchase(card.transmit, psam.transmit, request, public=public)
    if not isinstance(result, PurchaseResult) or not result.mac2_verified:
        raise BenchFailure(f"the recorded purchase failed: {result}")
    recovery = Recovery(
        application_serial=result.application_serial,
        offline_atc=result.offline_atc,
        transaction_type=request.transaction_type,
        amount=result.amount,
        balance_before=result.balance_before,
        terminal_id=result.terminal_id,
        terminal_sequence=result.terminal_sequence,
        time=result.time,
    )
    proof = recover(card.transmit, psam.transmit, recovery, public=public)
    if not isinstance(proof, PurchaseResult):
        raise BenchFailure(f"GET TRANSACTION PROOF did not prove the debit: {proof}")
    read_tunion(card.transmit, via_ppse=False, capp_record_ids=tuple(range(1, 3)))


def _record() -> tuple[Dump, Dump, dict[str, bytes]]:
    """The dumps of one full read, and layout vectors from that read and from a purchase."""
    card, psam = _devices()
    card_log = Recorder(card.transmit, card.atr())
    psam_log = Recorder(psam.transmit, psam.atr())
    with _capturing_layouts() as vectors:
        image = read_card(card_log, psam_log, atr=card.atr())
        if image.ssse is None or image.tunion is None or image.ecash is None:
            raise BenchFailure("the recorded read did not yield all three applications")
        _purchase_and_proof()
    stored_card = Dump.from_json(card_log.dump().to_json())
    stored_psam = Dump.from_json(psam_log.dump().to_json())
    return stored_card, stored_psam, vectors


def _per_call_us(function: Callable[[], object]) -> dict[str, float]:
    """Microseconds per call: BATCHES timed batches of BATCH calls, after one warm-up batch."""
    for _ in range(BATCH):
        function()
    samples = []
    for _ in range(BATCHES):
        start = time.perf_counter()
        for _ in range(BATCH):
            function()
        samples.append((time.perf_counter() - start) / BATCH * 1e6)
    return percentiles(samples)


def _application(select: bytes) -> str:
    """Which application a SELECT (or the GET RESPONSE of the SSSE's 61xx) was for."""
    name = select[5:]
    if select[1] == 0xC0:
        return "SSSE"
    if name.startswith(b"2PAY"):
        return "PPSE"
    if name.startswith(bytes.fromhex("A000000632")):
        return "T-Union"
    if name.startswith(bytes.fromhex("A000000333")):
        return "UnionPay"
    return name.hex().upper()


def _tlv_vectors(card_dump: Dump) -> list[tuple[str, Callable[[], object]]]:
    """Parsers without a fixed layout, on answers from the dump (status word removed)."""
    answers = [(e.command, e.response[:-2]) for e in card_dump.exchanges if e.response[-2:] == b"\x90\x00"]
    cases: list[tuple[str, Callable[[], object]]] = []
    for command, data in answers:
        if command[:4] in (b"\x00\xa4\x04\x00", b"\x00\xc0\x00\x00") and data:
            label = f"FCI of {_application(command)} ({len(data)} bytes)"
            cases.append((label, lambda data=data: parse_fci(data)))
    items = [data for command, data in answers if command[:2] == b"\x00\xb2" and command[3] == 0x00 and data]
    if items:
        first = items[0]
        cases.append(
            (f"SSSE item record ({len(first)} bytes)", lambda: parse_item_record(first, EF05, expected_tag=first[0]))
        )
    amounts = [data for command, data in answers if command[:2] == b"\x80\xca" and data]
    if amounts:
        amount = amounts[0]
        cases.append((f"e-cash amount ({len(amount)} bytes)", lambda: parse_amount(amount)))
    longest = max((e.command for e in card_dump.exchanges), key=len)
    cases.append((f"command APDU ({len(longest)} bytes)", lambda: CommandApdu.parse(longest)))
    return cases


def _image_row(card_dump: Dump, psam_dump: Dump) -> dict[str, Any]:
    atr = card_dump.atr
    samples = []
    for n in range(IMAGE_READS + 50):
        start = time.perf_counter()
        card: Transmit = replay(card_dump)
        psam: Transmit = replay(psam_dump)
        read_card(card, psam, atr=atr)
        if n >= 50:
            samples.append((time.perf_counter() - start) * 1e6)
    stats = percentiles(samples)
    return {
        "structure": "full card image: read_card over replay(Dump)",
        "bytes": sum(len(e.response) for e in card_dump.exchanges),
        "apdus": len(card_dump.exchanges) + len(psam_dump.exchanges),
        "unit": "us",
        "n": stats["n"],
        "p50": stats["p50"],
        "p99": stats["p99"],
        "mean": stats["mean"],
    }


def run() -> None:
    card_dump, psam_dump, vectors = _record()
    rows = [_image_row(card_dump, psam_dump)]
    layouts = all_layouts()
    missing = sorted(set(layouts) - set(vectors))
    for name in sorted(vectors):
        layout, vector = layouts[name], vectors[name]
        stats = _per_call_us(lambda layout=layout, vector=vector: layout.parse(vector))
        rows.append(
            {
                "structure": f"layout: {name}",
                "bytes": len(vector),
                "unit": "us",
                "n": stats["n"] * BATCH,
                "p50": stats["p50"],
                "p99": stats["p99"],
                "mean": stats["mean"],
            }
        )
    for label, function in _tlv_vectors(card_dump):
        stats = _per_call_us(function)
        rows.append(
            {
                "structure": f"TLV: {label}",
                "unit": "us",
                "n": stats["n"] * BATCH,
                "p50": stats["p50"],
                "p99": stats["p99"],
                "mean": stats["mean"],
            }
        )
    write(
        "parsing",
        rows,
        notes=(
            f"full image: {IMAGE_READS} reads of SSSE (with PSAM authentication and EF06), PPSE, T-Union "
            "(0x15-0x18, 0x1E, balance) and UnionPay e-cash, replayed from dumps of the virtual 'sichuan' card "
            "stored as JSON; each read includes building the two replay transmits. Per structure: per-call time "
            f"from {BATCHES} batches of {BATCH} calls (p50/p99 over batches). "
            + (f"Layouts with no vector in a read or a purchase: {', '.join(missing)}." if missing else "")
        ),
    )


if __name__ == "__main__":
    run()
