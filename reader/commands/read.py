"""`sscard read`: wait for one card on any reader and print its card image.

    sscard read [--reader NAME] [--config FILE] [--json] [--reveal] [--timeout SECONDS] [--no-psam]

Every configured reader is watched at once (the PC/SC contactless slot and the NFC device),
each by the same driver loop the daemon uses, so pcscd restarts and unplugged readers are
ridden out while waiting. `--reader` narrows the wait to one reader: an exact PC/SC reader
name, or an nfcpy path (usb..., tty:..., udp:...). When the PSAM slot holds a PSAM, it is
used for the SSSE fields a third-generation card only shows after authentication.

Personal fields (names, ID numbers, card numbers) and the UID are masked unless `--reveal`:
the output of a diagnostic command ends up in tickets and chat logs.

Exit status: 0 card read, 1 the card could not be read, 2 bad configuration, 3 no card
within `--timeout`, 130 interrupted.
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
from protocols.image import MASK, CardImage, read_card, to_jsonable
from protocols.status import CardStatusError
from reader.backends.atr import classify_atr
from reader.backends.base import CardChannel, CardRemoved, Reader, ReaderError, TransmitTimeout
from reader.backends.loop import ReaderLoop
from reader.backends.pcsc import PcscReader
from reader.backends.sam import SamSlot
from reader.backends.settings import ReaderSettings, load_reader_settings

NFC_PATH = re.compile(r"^(usb|tty:|com:|udp)")


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
class Read:
    reader: str
    atr: bytes
    uid: bytes | None
    image: CardImage


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
        readers.append(pcsc.contactless_reader())
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
        reader = settings.pcsc.sam_reader() if enabled and settings.pcsc.enabled else None
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
        return lambda apdu: slot.transmit(apdu)

    def close(self) -> None:
        if self._slot is not None:
            self._slot.close()


def note(message: str) -> None:
    print(f"sscard read: {message}", file=sys.stderr)


class FirstCard:
    """The processing callback of every loop: the first card read completely wins."""

    def __init__(self, psam: Psam) -> None:
        self.outcome: queue.Queue[Read | Failed] = queue.Queue()
        self._psam = psam
        self._lock = threading.Lock()
        self._done = False

    def process_for(self, reader: Reader) -> Callable[[CardChannel], None]:
        def process(channel: CardChannel) -> None:
            with self._lock:
                if self._done:
                    return
                try:
                    image = read_card(channel.transmit, self._psam.transmit, atr=channel.atr)
                    uid = _uid(channel)
                except (CardRemoved, TransmitTimeout) as error:
                    note(f"the card left before it was read ({error}); present it again")
                    raise
                except (ProtocolError, CardStatusError, ReaderError) as error:
                    self._done = True
                    self.outcome.put(Failed(reader.name, error))
                    return
                self._done = True
                where = getattr(channel, "reader_name", None) or reader.name  # the PC/SC slot that held it
                self.outcome.put(Read(where, channel.atr, uid, image))

        return process


def _uid(channel: CardChannel) -> bytes | None:
    try:
        return channel.uid
    except ReaderError:
        return None


def as_json(read: Read, reveal: bool) -> dict[str, Any]:
    uid: str | None = None
    if read.uid is not None:
        uid = read.uid.hex().upper() if reveal else MASK
    return {
        "reader": read.reader,
        "atr": read.atr.hex().upper(),
        "card": classify_atr(read.atr).describe(),
        "uid": uid,
        "image": to_jsonable(read.image, reveal),
    }


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
        if path == "atr":
            continue
        print(f"{path}: {'-' if value is None else value}")
    if image["personal"] and not image["revealed"]:
        print(f"({len(image['personal'])} personal fields masked; --reveal shows them)")


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
    document = as_json(outcome, args.reveal)
    if args.json:
        print(json.dumps(document, ensure_ascii=False, indent=2))
    else:
        print_text(document)
    return 0
