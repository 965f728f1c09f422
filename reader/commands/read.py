"""`sscard read`: wait for one card on any reader and print its card image.

    sscard read [--reader NAME] [--config FILE] [--json] [--reveal] [--timeout SECONDS] [--no-psam]

Every configured reader is watched at once (the PC/SC contactless slot and the NFC device),
each by the same driver loop the daemon uses, so pcscd restarts and unplugged readers are
ridden out while waiting. `--reader` narrows the wait to one reader: an exact PC/SC reader
name, or an nfcpy path (usb..., tty:..., udp:...). When the PSAM slot holds a PSAM, it is
used for the SSSE fields a third-generation card only shows after authentication.

Personal fields (names, ID numbers, card numbers, the T-Union serial, which is the transport
card's number) and the UID are masked unless `--reveal`: the output of a diagnostic command
ends up in tickets and chat logs.

What is shown is what a person reads off the card: the holder's name joined with its extension
(item 4E), the purse's own money apart from its overdraft allowance (GET BALANCE P1 00 counts
the allowance in), amounts in yuan (in fen with `--json`, as the card counts them). A part that
cannot be read is said, with why (no PSAM, a PSAM that cannot authenticate the SSSE), and the
rest is shown: that is still a read card.

Exit status: 0 card read (perhaps in part), 1 the card could not be read (a card failing SSSE
authentication among them), 2 bad configuration, 3 no card within `--timeout`, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from protocols.errors import ProtocolError
from protocols.exchange import Transmit, command
from protocols.image import MASK, CardImage, read_card, to_jsonable
from protocols.ssse_auth import SsseAuthenticationFailed
from protocols.status import CardStatusError
from protocols.tunion import select_tunion
from protocols.tunion_read import read_balance
from reader.backends.atr import classify_atr
from reader.backends.base import CardChannel, CardRemoved, Reader, ReaderError, TransmitTimeout
from reader.backends.loop import ReaderLoop
from reader.backends.pcsc import PcscReader, contactless_reader, sam_reader
from reader.backends.sam import SamSlot
from reader.backends.settings import ReaderSettings, load_reader_settings
from reader.daemon.feedback import yuan

NFC_PATH = re.compile(r"^(usb|tty:|com:|udp)")
AMOUNT_PATHS = frozenset(
    {
        "tunion.balance",
        "tunion.overdraft_allowance",
        "tunion.transactions[].amount",
        "tunion.transactions[].overdraft_limit",
        "tunion.process_records[].amount",
        "tunion.process_records[].balance_after",
        "ecash.balance",
        "ecash.single_transaction_limit",
        "ecash.balance_limit",
        "ecash.reset_threshold",
        "ecash.offline_available",
    }
)
"""Fields holding money in fen (paths with list indices as []): shown in yuan as text."""
INDEX = re.compile(r"\[\d+\]")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("read", help="wait for one card and print its card image")
    parser.add_argument("--reader", metavar="NAME", help="PC/SC reader name or nfcpy path (default: all configured)")
    parser.add_argument("--config", type=Path, help="TOML file with a [readers] table (default: built-in)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--reveal", action="store_true", help="show personal fields and the UID in clear")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long (default: wait)")
    parser.add_argument("--no-psam", action="store_true", help="do not use the PSAM slot")
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class Purse:
    """The T-Union purse as its holder counts it, in fen."""

    own: int
    """The holder's own money: GET BALANCE without the overdraft allowance."""
    overdraft_allowance: int
    """What the card lets the holder overdraw on top (GET BALANCE P1 00 less the own money)."""


@dataclass(frozen=True)
class Read:
    reader: str
    atr: bytes
    uid: bytes | None
    image: CardImage
    purse: Purse | None = None


@dataclass(frozen=True)
class Failed:
    reader: str
    error: Exception


def build_readers(settings: ReaderSettings, name: str | None) -> list[Reader]:
    """The readers to watch: the one named, or every configured contactless reader."""
    pcsc = settings.pcsc
    if name is not None:
        if NFC_PATH.match(name):
            from reader.backends.nfc import NfcReader

            return [NfcReader(name, name=name)]
        exact = f"^{re.escape(name)}$"
        return [PcscReader(exact, name=name, transmit_timeout=pcsc.transmit_timeout)]
    readers: list[Reader] = []
    if pcsc.enabled:
        readers.append(contactless_reader(pcsc))
    if settings.nfc.path is not None:
        from reader.backends.nfc import NfcReader

        readers.append(NfcReader(settings.nfc.path))
    return readers


class Psam:
    """The PSAM, if the SAM slot holds one; shared by the readers (SamSlot serialises commands).

    It is looked for when a card needs reading, not before: a PSAM put in while the command
    waits is still found.
    """

    def __init__(self, settings: ReaderSettings, enabled: bool = True) -> None:
        reader = sam_reader(settings.pcsc) if enabled and settings.pcsc.enabled else None
        self._slot = SamSlot(reader, open_timeout=0.5) if reader is not None else None
        self._missing_noted = False

    @property
    def transmit(self) -> Callable[[bytes], bytes] | None:
        slot = self._slot
        if slot is None:
            return None
        try:
            slot.channel()
        except ReaderError as error:
            if not self._missing_noted:
                note(f"no PSAM ({error}); fields that need card authentication are not read")
                self._missing_noted = True
            return None
        return slot.transmit

    def close(self) -> None:
        if self._slot is not None:
            self._slot.close()


def note(message: str) -> None:
    print(f"sscard read: {message}", file=sys.stderr)


def read_whole_card(transmit: Transmit, psam: Transmit | None, atr: bytes) -> tuple[CardImage, Purse | None]:
    """The card image, and the purse's own money apart from its overdraft allowance.

    The image's T-Union balance is GET BALANCE P1 00, which counts the allowance in; the own
    money takes one more GET BALANCE on the e-purse, selected again since the e-cash read
    came after it.
    """
    image = read_card(transmit, psam, atr=atr)
    tunion = image.tunion
    if tunion is None:
        return image, None
    command(transmit, select_tunion(tunion.aid), "SELECT T-Union")
    own = read_balance(transmit, include_overdraft=False)
    total = tunion.balance if tunion.balance is not None else own
    return image, Purse(own, max(0, total - own))


class FirstCard:
    """The processing callback of every loop: the first card read completely wins."""

    def __init__(self, psam: Psam) -> None:
        self.outcome: queue.Queue[Read | Failed] = queue.Queue()
        self._psam = psam
        self._lock = threading.Lock()
        self._done = False

    def process_for(self, reader: Reader) -> Callable[[CardChannel, str], None]:
        def process(channel: CardChannel, tap_id: str) -> None:
            with self._lock:
                if self._done:
                    return
                try:
                    image, purse = read_whole_card(channel.transmit, self._psam.transmit, channel.atr)
                    uid = _uid(channel)
                except (CardRemoved, TransmitTimeout) as error:
                    note(f"the card left before it was read ({error}); present it again")
                    raise
                except (ProtocolError, CardStatusError, ReaderError, SsseAuthenticationFailed) as error:
                    self._done = True
                    self.outcome.put(Failed(reader.name, error))
                    return
                self._done = True
                where = getattr(channel, "reader_name", None) or reader.name  # the PC/SC slot that held it
                self.outcome.put(Read(where, channel.atr, uid, image, purse))

        return process


def _uid(channel: CardChannel) -> bytes | None:
    try:
        return channel.uid
    except ReaderError:
        return None


def _inserted_after(mapping: dict[str, Any], after: str, key: str, value: Any) -> dict[str, Any]:
    """`mapping` with `key` placed right after `after` (at the end when `after` is absent)."""
    out: dict[str, Any] = {}
    for name, item in mapping.items():
        if name != key:
            out[name] = item
        if name == after:
            out[key] = value
    out.setdefault(key, value)
    return out


def as_json(read: Read, reveal: bool) -> dict[str, Any]:
    """The document both outputs are made from; amounts in fen, personal values masked."""
    uid: str | None = None
    if read.uid is not None:
        uid = read.uid.hex().upper() if reveal else MASK
    image = to_jsonable(read.image, reveal)
    data, personal = image["data"], image["personal"]
    ssse = read.image.ssse
    if ssse is not None:
        full_name = ssse.full_name
        shown = full_name if reveal or full_name is None else MASK
        data["ssse"] = _inserted_after(data["ssse"], "name_extension", "full_name", shown)
        personal.append("ssse.full_name")
    tunion = data.get("tunion")
    if tunion is not None:
        public = tunion["public"]
        if not reveal and public.get("application_serial") is not None:
            public["application_serial"] = MASK
        personal.append("tunion.public.application_serial")
        if read.purse is not None:
            tunion["balance"] = read.purse.own
            data["tunion"] = _inserted_after(tunion, "balance", "overdraft_allowance", read.purse.overdraft_allowance)
    return {
        "reader": read.reader,
        "atr": read.atr.hex().upper(),
        "card": classify_atr(read.atr).describe(),
        "uid": uid,
        "image": image,
    }


def in_yuan(fen: int) -> str:
    """Fen as yuan with two decimals and the unit (the card counts fen; a person reads yuan)."""
    return f"{yuan(fen)} yuan"


def shown_value(path: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool) and INDEX.sub("[]", path) in AMOUNT_PATHS:
        return in_yuan(value)
    return str(value)


def _flatten(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _flatten(child, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list) and value:
        for index, child in enumerate(value):
            yield from _flatten(child, f"{path}[{index}]")
    else:
        yield path, value


def print_text(document: dict[str, Any]) -> None:
    print(f"reader  {document['reader']}")
    print(f"card    {document['card']}")
    print(f"atr     {document['atr']}")
    print(f"uid     {document['uid'] or '-'}")
    image = document["image"]
    for path, value in _flatten(image["data"], ""):
        if path in ("atr", "ssse.name", "ssse.name_extension"):
            continue  # the name is shown once, joined with its extension
        label = "ssse.name" if path == "ssse.full_name" else path
        print(f"{label}: {shown_value(path, value)}")
    if image["personal"] and not image["revealed"]:
        print(f"({len(image['personal'])} personal fields masked; --reveal shows them)")


def describe_reader(reader: Reader, settings: ReaderSettings) -> str:
    """A reader as the person waiting knows it: the configured PC/SC slot shows its pattern."""
    if reader.name == "pcsc-contactless":
        return f"{reader.name} (/{settings.pcsc.contactless}/)"
    return reader.name


def wait_for_first_card(readers: list[Reader], first: FirstCard, timeout: float | None) -> Read | Failed | None:
    loops = [ReaderLoop(reader, first.process_for(reader), wait_slice=0.5) for reader in readers]
    for loop in loops:
        loop.start()
    try:
        return first.outcome.get(timeout=timeout)
    except queue.Empty:
        return None
    finally:
        for loop in loops:
            loop.stop()
        for reader in readers:
            reader.close()


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_reader_settings(args.config)
        readers = build_readers(settings, args.reader)
    except (OSError, ValueError, ValidationError) as error:
        print(f"sscard read: cannot use the configuration: {error}", file=sys.stderr)
        return 2
    if not readers:
        print("sscard read: no contactless reader is configured", file=sys.stderr)
        return 2
    psam = Psam(settings, enabled=not args.no_psam)
    note(f"waiting for a card on {', '.join(describe_reader(reader, settings) for reader in readers)}…")
    try:
        outcome = wait_for_first_card(readers, FirstCard(psam), args.timeout)
    except KeyboardInterrupt:
        return 130
    finally:
        psam.close()
    if outcome is None:
        print(f"sscard read: no card within {args.timeout} s", file=sys.stderr)
        return 3
    if isinstance(outcome, Failed):
        print(f"sscard read: {outcome.reader}: the card could not be read: {outcome.error}", file=sys.stderr)
        return 1
    ssse = outcome.image.ssse
    if ssse is not None and ssse.authentication_problem is not None:
        note(f"{outcome.reader}: holder data (EF06) not read: {ssse.authentication_problem}")
    document = as_json(outcome, args.reveal)
    if args.json:
        print(json.dumps(document, ensure_ascii=False, indent=2))
    else:
        print_text(document)
    return 0
