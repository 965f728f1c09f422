"""The card image: typed records of what was read, their JSON form, and raw dumps.

Two forms of the same tap:
- `CardImage`, immutable typed records (SSSE, T-Union, e-cash). `to_jsonable` turns any of
  these records into JSON values; fields marked personal (protocols.marks) are listed under
  "personal" with their JSON paths and masked unless `reveal` is asked for, so that no output
  can leak them by accident.
- `Dump`, the raw command/response pairs of a conversation. `replay(dump)` is a `Transmit`
  answering from the dump, so every parser and conversation can run again offline on stored
  cards, the way Metrodroid tests its parsers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocols.ecash import ECashImage, read_ecash
from protocols.errors import BadEncoding, BadValue, ProtocolError
from protocols.exchange import Transmit
from protocols.marks import is_personal
from protocols.ppse import read_ppse
from protocols.ssse_auth import PsamSsseConfig
from protocols.ssse_read import SsseImage, read_ssse
from protocols.status import FileNotFound
from protocols.tunion_read import TUnionImage, read_tunion

MASK = "***"


@dataclass(frozen=True)
class CardImage:
    """Everything read from one card in one tap; None for an application the card lacks."""

    atr: bytes | None = None
    ssse: SsseImage | None = None
    tunion: TUnionImage | None = None
    ecash: ECashImage | None = None


def mask(value: Any) -> str:
    """The masked stand-in of a personal value: only its presence survives."""
    return MASK


def plain_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex().upper()
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, bool | int | str | float):
        return value
    return str(value)


def _walk(value: Any, path: str, reveal: bool, personal: list[str]) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            child = getattr(value, f.name)
            child_path = f"{path}.{f.name}" if path else f.name
            if is_personal(f):
                personal.append(child_path)
                out[f.name] = _walk(child, child_path, reveal, []) if reveal or child is None else mask(child)
            else:
                out[f.name] = _walk(child, child_path, reveal, personal)
        return out
    if isinstance(value, tuple | list):
        return [_walk(item, f"{path}[{i}]", reveal, personal) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _walk(v, f"{path}.{k}", reveal, personal) for k, v in value.items()}
    return plain_value(value)


def to_jsonable(record: Any, reveal: bool = False) -> dict[str, Any]:
    """{"data": ..., "personal": [paths]}; personal values are masked unless `reveal`."""
    personal: list[str] = []
    data = _walk(record, "", reveal, personal)
    return {"data": data, "personal": personal, "revealed": reveal}


def to_json(record: Any, reveal: bool = False) -> str:
    return json.dumps(to_jsonable(record, reveal), ensure_ascii=False, sort_keys=False)


# --- raw dumps -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    """One command APDU and the raw answer (data and status word) the card gave."""

    command: bytes
    response: bytes


@dataclass(frozen=True)
class Dump:
    """A conversation as it happened on the wire. Dumps carry personal data in clear."""

    exchanges: tuple[Exchange, ...]
    atr: bytes | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "atr": None if self.atr is None else self.atr.hex().upper(),
                "exchanges": [
                    {"command": e.command.hex().upper(), "response": e.response.hex().upper()} for e in self.exchanges
                ],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Dump:
        """Load a dump; malformed JSON or hex is a `ProtocolError` on structure "dump"."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadEncoding("dump", "json", exc.pos, exc.msg) from None
        if not isinstance(raw, dict) or not isinstance(raw.get("exchanges"), list):
            raise BadValue("dump", "exchanges", 0, "expected an object with an exchanges list")
        pairs: list[Exchange] = []
        for index, item in enumerate(raw["exchanges"]):
            if not isinstance(item, dict):
                raise BadValue("dump", f"exchanges[{index}]", index, "not an object")
            pairs.append(
                Exchange(
                    _hex(item.get("command"), f"exchanges[{index}].command"),
                    _hex(item.get("response"), f"exchanges[{index}].response"),
                )
            )
        atr = raw.get("atr")
        return cls(tuple(pairs), None if atr is None else _hex(atr, "atr"))


def _hex(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise BadValue("dump", field, 0, "expected a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise BadEncoding("dump", field, 0, str(exc)) from None


class Recorder:
    """A `Transmit` that forwards to another and keeps every pair for a `Dump`."""

    def __init__(self, transmit: Transmit, atr: bytes | None = None) -> None:
        self._transmit = transmit
        self._pairs: list[Exchange] = []
        self._atr = atr

    def __call__(self, apdu: bytes) -> bytes:
        response = self._transmit(apdu)
        self._pairs.append(Exchange(bytes(apdu), bytes(response)))
        return response

    def dump(self) -> Dump:
        return Dump(tuple(self._pairs), self._atr)


class ReplayMiss(ProtocolError):
    """The replayed conversation sent a command the dump does not hold (or holds fewer times)."""


def replay(dump: Dump) -> Transmit:
    """A transmit answering each command with the dump's answers to that exact command, in order.

    Matching by command rather than by position lets a parser that reads in a different
    order, or reads less, still run on an older dump; repeated commands (GET CHALLENGE)
    get their answers in recorded order.
    """
    answers: dict[bytes, list[bytes]] = {}
    for pair in dump.exchanges:
        answers.setdefault(pair.command, []).append(pair.response)
    used: dict[bytes, int] = {}

    def transmit(apdu: bytes) -> bytes:
        key = bytes(apdu)
        queue = answers.get(key)
        index = used.get(key, 0)
        if queue is None or index >= len(queue):
            raise ReplayMiss("dump", "command", index, f"no recorded answer to {key.hex().upper()}")
        used[key] = index + 1
        return queue[index]

    return transmit


def read_card(
    transmit: Transmit,
    psam: Transmit | None = None,
    *,
    atr: bytes | None = None,
    psam_config: PsamSsseConfig | None = None,
    applications: tuple[str, ...] = ("ssse", "tunion", "ecash"),
) -> CardImage:
    """Read every application asked for; an application the card lacks stays None."""
    ssse: SsseImage | None = None
    if "ssse" in applications:
        try:
            ssse = read_ssse(transmit, psam, psam_config)
        except FileNotFound:
            ssse = None
    directory = read_ppse(transmit) if {"tunion", "ecash"} & set(applications) else ()
    tunion = read_tunion(transmit, directory=directory) if "tunion" in applications else None
    ecash = read_ecash(transmit, directory=directory) if "ecash" in applications else None
    return CardImage(atr=atr, ssse=ssse, tunion=tunion, ecash=ecash)


def replay_card(dump: Dump, read: Callable[[Transmit], Any] = read_card) -> Any:
    """Run `read` over a stored dump (offline parser regression)."""
    return read(replay(dump))


__all__ = [
    "MASK",
    "CardImage",
    "Dump",
    "Exchange",
    "Recorder",
    "ReplayMiss",
    "mask",
    "read_card",
    "replay",
    "replay_card",
    "to_json",
    "to_jsonable",
]
