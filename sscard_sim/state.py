"""The non-volatile memory of a virtual card: what survives power-off, and its optional state file.

A real card keeps its purse balance, counters and logs in EEPROM and updates them through a
transaction buffer, so that a card torn from the field mid-write comes back with either the
old or the new values. The virtual card gets the same property from copy-on-write: every
command that changes memory builds a whole new `CardMemory` and installs it with one
assignment (`MemoryStore.commit`). When a state file is configured, the new memory is first
written to a temporary file, flushed, and renamed over the old one, so the file too holds
either the old or the new memory, never a mixture.

Volatile state (the selected application, security status, a pending purchase, the CAPP data
cache) is not here: it lives in the card's session and vanishes with power.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

STATE_FORMAT = 1


class StateFileError(RuntimeError):
    """A state file that cannot be read, parsed or written."""


@dataclass(frozen=True)
class TransactionProof:
    """MAC2 and TAC of the last committed debit, for GET TRANSACTION PROOF after a tear."""

    atc: int
    transaction_type: int
    mac2: bytes
    tac: bytes


@dataclass(frozen=True)
class CardMemory:
    """Everything a card remembers across power cycles. Logs are newest first."""

    balance: int
    offline_atc: int
    transactions: tuple[bytes, ...] = ()
    process_log: tuple[bytes, ...] = ()
    capp_records: tuple[bytes, ...] = ()
    last_proof: TransactionProof | None = None
    external_auth_tries: int = 5
    ecash_balance: int = 0
    ecash_atc: int = 0
    locked: bool = False

    def with_changes(self, **changes: Any) -> CardMemory:
        return replace(self, **changes)


def _to_json(memory: CardMemory) -> dict[str, Any]:
    data = asdict(memory)
    data["transactions"] = [record.hex() for record in memory.transactions]
    data["process_log"] = [record.hex() for record in memory.process_log]
    data["capp_records"] = [record.hex() for record in memory.capp_records]
    if memory.last_proof is not None:
        data["last_proof"] = {
            "atc": memory.last_proof.atc,
            "transaction_type": memory.last_proof.transaction_type,
            "mac2": memory.last_proof.mac2.hex(),
            "tac": memory.last_proof.tac.hex(),
        }
    return {"format": STATE_FORMAT, "memory": data}


def _from_json(document: dict[str, Any]) -> CardMemory:
    if document.get("format") != STATE_FORMAT:
        raise StateFileError(f"unknown state format {document.get('format')!r}")
    data = dict(document["memory"])
    proof = data.pop("last_proof", None)
    return CardMemory(
        balance=int(data["balance"]),
        offline_atc=int(data["offline_atc"]),
        transactions=tuple(bytes.fromhex(r) for r in data["transactions"]),
        process_log=tuple(bytes.fromhex(r) for r in data["process_log"]),
        capp_records=tuple(bytes.fromhex(r) for r in data["capp_records"]),
        last_proof=None
        if proof is None
        else TransactionProof(
            int(proof["atc"]),
            int(proof["transaction_type"]),
            bytes.fromhex(proof["mac2"]),
            bytes.fromhex(proof["tac"]),
        ),
        external_auth_tries=int(data["external_auth_tries"]),
        ecash_balance=int(data["ecash_balance"]),
        ecash_atc=int(data["ecash_atc"]),
        locked=bool(data["locked"]),
    )


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a crash leaves the old or the new content, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@dataclass
class MemoryStore:
    """The card's memory, optionally mirrored in a state file that survives the process."""

    memory: CardMemory
    path: Path | None = None
    commits: int = field(default=0, init=False)

    @classmethod
    def open(cls, initial: CardMemory, path: Path | None) -> MemoryStore:
        """The stored memory when `path` exists, else `initial` (written there at the first commit)."""
        if path is None or not path.exists():
            return cls(initial, path)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            return cls(_from_json(document), path)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise StateFileError(f"cannot load card state {path}: {error}") from error

    def commit(self, memory: CardMemory) -> None:
        """Make `memory` the card's memory: all of it at once, or (on error) none of it."""
        if self.path is not None:
            try:
                write_atomically(self.path, json.dumps(_to_json(memory), indent=1))
            except OSError as error:
                raise StateFileError(f"cannot write card state {self.path}: {error}") from error
        self.memory = memory
        self.commits += 1
