"""The hotlist (deny list): a numbered set of card-token prefixes, looked up on every tap.

An entry is the first 16 bytes of a card token (the HMAC-SHA256 of the card number under the
deployment key, see reader/daemon/record.py). The token is already the output of a keyed
pseudo-random function, so its prefixes are uniform and need no second hash, and 128 bits
leave no room for a false hit: with n = 5,000,000 entries a card that is not listed matches
one by chance with probability n / 2**128, about 1.5e-32 per tap; over every social security
card ever issued (under 2e9) the chance that any one is wrongly refused is below 3e-23. Half
of the 32-byte token halves the file (80 MB instead of 160 MB at 5 million entries), which
keeps the whole list, if every page of it is touched, under the 100 MiB memory target.

Two byte layouts, all integers big-endian.

Signed document, from the back office (HTTP body or MQTT payload), format 2:

    0   "SSHL"        magic
    4   u8  = 2       format
    5   u8            kind: 1 = full list, 2 = delta
    6   u8  = 16      entry size
    7   u8  = 0       reserved
    8   u64           version: the list this document produces (>= 1)
    16  u64           base version: for a delta the version it applies to, 0 for a full list
    24  u32           count: entries of the resulting list
    28  u32           adds: entries that follow first (a full list: = count)
    32  u32           removes: entries that follow next (a full list: 0)
    36                adds x 16 bytes, strictly ascending; removes x 16 bytes, strictly ascending
    end 64 bytes      Ed25519 signature (RFC 8032, pure) of every byte before it

The list file, on the terminal (`[hotlist] path`), format 1:

    0   "SSHS"        magic
    4   u8  = 1       format
    5   u8  = 16      entry size
    6   u16 = 64      entries per index block
    8   u64           version (0: written locally, not from the back office)
    16  u64           count
    24  32 bytes      SHA-256 of the entries
    56  8 bytes       reserved, zero
    64                count x 16 bytes, strictly ascending
    then              ceil(count / 64) x u64 LITTLE-endian: the top 64 bits of the first entry
                      of each block of 64 (the block index: 0.8 % of the file, read in place)

The file is memory-mapped and searched in place, so start-up costs a header check, a size
check and one mmap whatever the size; the checksum is for `install` of a file put there by hand and for
`Hotlist.verify`, not read at start-up (the terminal wrote the file itself, synced, and swapped
it in with a rename, so it is never half-written). Every install writes a complete new file
beside the old one, syncs it, renames it over the old one and syncs the directory; a crash
leaves the old list or the new one, and a leftover temporary file is never read.

A document whose signature, version, count, size or order does not check out is refused
whole and the list in force stays. A full list must be newer than the list in force (an old
list replayed would clear stolen cards); a delta applies only to the version it names, every
entry it removes must be listed, every entry it adds must not be, and the result must have
the count it declares.
"""

from __future__ import annotations

import array
import bisect
import hashlib
import mmap
import os
import struct
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reader.log import get_logger
from reader.uplink.errors import HotlistFormatError, HotlistSignatureError, HotlistVersionError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ENTRY_SIZE = 16
DIGEST_SIZE = ENTRY_SIZE
TOKEN_SIZE = 32
SIGNATURE_SIZE = 64

MAGIC = b"SSHL"
FORMAT_VERSION = 2
KIND_FULL = 1
KIND_DELTA = 2
_WIRE = struct.Struct(">4sBBBBQQIII")

STORE_MAGIC = b"SSHS"
STORE_FORMAT = 1
_STORE = struct.Struct(">4sBBHQQ32s8x")
HEADER_SIZE = _STORE.size
BLOCK_ENTRIES = 64
_BLOCK_BYTES = BLOCK_ENTRIES * ENTRY_SIZE

_U64 = 1 << 64
_CHUNK_ENTRIES = 1 << 16

Buffer = bytes | bytearray | memoryview | mmap.mmap
# What a list is searched in: slicing either gives `bytes`, which compare (memoryviews do not).
_Searchable = bytes | mmap.mmap


def public_key(raw: bytes) -> Ed25519PublicKey:
    """The back office's Ed25519 public key from its 32 raw bytes (HotlistSettings.public_key_bytes)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(raw)


def token_digest(token: bytes) -> bytes:
    """The hotlist entry of a 32-byte card token: its first 16 bytes."""
    if len(token) != TOKEN_SIZE:
        raise ValueError(f"a card token is {TOKEN_SIZE} bytes, got {len(token)}")
    return bytes(token[:ENTRY_SIZE])


# --------------------------------------------------------------------------- encoding


def encode_hotlist(version: int, tokens: Iterable[bytes]) -> bytes:
    """A list file (the terminal's own format) listing these card tokens.

    This is what `HotlistStore.install` takes from the local disk (SIGHUP); documents from
    the back office are signed instead (`encode_full`, `encode_delta`).
    """
    return encode_list_file(version, (token_digest(t) for t in tokens))


def encode_list_file(version: int, entries: Iterable[bytes]) -> bytes:
    """A list file of these entries (sorted and deduplicated here)."""
    ordered = _sorted_entries(entries)
    body = b"".join(ordered)
    header = _store_header(version, len(ordered), hashlib.sha256(body).digest())
    return header + body + _block_index([memoryview(body)])


def encode_full(version: int, entries: Iterable[bytes], key: Ed25519PrivateKey) -> bytes:
    """A signed full list (what the back office publishes); entries are sorted here."""
    ordered = _sorted_entries(entries)
    head = _WIRE.pack(MAGIC, FORMAT_VERSION, KIND_FULL, ENTRY_SIZE, 0, version, 0, len(ordered), len(ordered), 0)
    body = head + b"".join(ordered)
    return body + key.sign(body)


def encode_delta(
    base: int,
    version: int,
    *,
    adds: Iterable[bytes],
    removes: Iterable[bytes],
    count: int,
    key: Ed25519PrivateKey,
) -> bytes:
    """A signed delta from list `base` to list `version`, which has `count` entries."""
    plus, minus = _sorted_entries(adds), _sorted_entries(removes)
    head = _WIRE.pack(MAGIC, FORMAT_VERSION, KIND_DELTA, ENTRY_SIZE, 0, version, base, count, len(plus), len(minus))
    body = head + b"".join(plus) + b"".join(minus)
    return body + key.sign(body)


def _sorted_entries(entries: Iterable[bytes]) -> list[bytes]:
    ordered = sorted(set(entries))
    if any(len(e) != ENTRY_SIZE for e in ordered):
        raise HotlistFormatError(f"entries must be {ENTRY_SIZE} bytes")
    return ordered


def _store_header(version: int, count: int, checksum: bytes) -> bytes:
    return _STORE.pack(STORE_MAGIC, STORE_FORMAT, ENTRY_SIZE, BLOCK_ENTRIES, version, count, checksum)


# --------------------------------------------------------------------------- signed documents


@dataclass(frozen=True, slots=True)
class SignedDocument:
    """A back-office document whose layout and signature checked out (not yet its versions)."""

    kind: int
    version: int
    base: int
    count: int
    adds: memoryview
    removes: memoryview

    @property
    def is_delta(self) -> bool:
        return self.kind == KIND_DELTA


def peek(document: Buffer) -> tuple[int, int, int] | None:
    """(kind, version, base) from a signed document's header, unchecked; None if it is not one."""
    if len(document) < _WIRE.size or bytes(document[:4]) != MAGIC:
        return None
    _magic, fmt, kind, _size, _reserved, version, base, _count, _adds, _removes = _WIRE.unpack_from(document)
    return (kind, version, base) if fmt == FORMAT_VERSION else None


def read_signed(document: Buffer, public_key: Ed25519PublicKey) -> SignedDocument:
    """Check a signed document's layout and signature; raises HotlistFormatError/HotlistSignatureError."""
    from cryptography.exceptions import InvalidSignature

    view = memoryview(document).cast("B")
    if len(view) < _WIRE.size + SIGNATURE_SIZE:
        raise HotlistFormatError("document too short")
    magic, fmt, kind, size, reserved, version, base, count, adds, removes = _WIRE.unpack_from(view)
    if magic != MAGIC:
        raise HotlistFormatError("not a hotlist document (bad magic)")
    if fmt != FORMAT_VERSION or size != ENTRY_SIZE or reserved != 0:
        raise HotlistFormatError(f"unsupported format {fmt} / entry size {size}")
    end = _WIRE.size + (adds + removes) * ENTRY_SIZE
    if len(view) != end + SIGNATURE_SIZE:
        raise HotlistFormatError(f"length {len(view)} does not match {adds} + {removes} entries")
    try:
        public_key.verify(bytes(view[end:]), view[:end])
    except InvalidSignature as exc:
        raise HotlistSignatureError("signature does not verify with the configured public key") from exc
    if version == 0:
        raise HotlistVersionError("version 0 is not a back-office version")
    if kind == KIND_FULL:
        if base != 0 or removes != 0 or adds != count:
            raise HotlistFormatError(f"full list: count {count} does not match its {adds} entries")
    elif kind == KIND_DELTA:
        if version <= base:
            raise HotlistVersionError(f"delta {base} -> {version} does not go forward")
    else:
        raise HotlistFormatError(f"unknown document kind {kind}")
    plus = view[_WIRE.size : _WIRE.size + adds * ENTRY_SIZE]
    minus = view[_WIRE.size + adds * ENTRY_SIZE : end]
    _check_ascending(plus, "added" if kind == KIND_DELTA else "listed")
    _check_ascending(minus, "removed")
    return SignedDocument(kind, version, base, count, plus, minus)


def _check_ascending(entries: memoryview, what: str) -> None:
    """Strict order of 16-byte entries, in C-speed passes over their top 64 bits (then exactly on ties)."""
    count = len(entries) // ENTRY_SIZE
    previous: bytes | None = None
    for start in range(0, count, _CHUNK_ENTRIES):
        stop = min(count, start + _CHUNK_ENTRIES)
        chunk = entries[start * ENTRY_SIZE : stop * ENTRY_SIZE]
        first = bytes(chunk[:ENTRY_SIZE])
        if previous is not None and not previous < first:
            raise HotlistFormatError(f"{what} entries are not in strictly ascending order")
        previous = bytes(chunk[-ENTRY_SIZE:])
        tops = array.array("Q", chunk.cast("Q")[::2])
        if sys.byteorder == "little":
            tops.byteswap()
        if all(map(int.__lt__, tops, tops[1:])):
            continue
        for i in range(1, stop - start):  # a tie or a fault in the top halves: compare whole entries
            before, after = chunk[(i - 1) * ENTRY_SIZE : i * ENTRY_SIZE], chunk[i * ENTRY_SIZE : (i + 1) * ENTRY_SIZE]
            if not bytes(before) < bytes(after):
                raise HotlistFormatError(f"{what} entries are not in strictly ascending order")


# --------------------------------------------------------------------------- one list


class Hotlist:
    """One immutable version of the list; `token in hotlist` is the lookup.

    The entries stay in the mapped file (or, for a list checked in memory, in its bytes). A
    lookup bisects the block index (C code, over the mapped index in place) for the one block
    of 64 entries that can hold the entry, copies that kilobyte and searches it with
    `bytes.find`: about 1.6 us at five million entries, touching two or three pages.
    """

    __slots__ = ("_buf", "_checksum", "_count", "_index", "_map", "number")

    def __init__(
        self, number: int | None, buf: _Searchable, count: int, checksum: bytes, mapping: mmap.mmap | None
    ) -> None:
        self.number = number
        self._buf = buf
        self._count = count
        self._checksum = checksum
        self._map = mapping  # kept so the mapping lives as long as this version
        self._index = _index_view(buf, count)

    @classmethod
    def empty(cls) -> Hotlist:
        """No list received yet: nothing is denied, and taps carry version None."""
        return cls(None, bytes(HEADER_SIZE), 0, b"", None)

    @classmethod
    def open(cls, path: Path) -> Hotlist:
        """Map a list file after checking its header and size (O(1)); raises HotlistFormatError."""
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, HEADER_SIZE, 0)
            number, count, checksum = _read_store_header(head, size)
            mapping = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        if hasattr(mapping, "madvise"):
            mapping.madvise(mmap.MADV_RANDOM)  # lookups touch a few scattered pages: no read-ahead
        return cls(number, mapping, count, checksum, mapping)

    @classmethod
    def parse(cls, image: Buffer) -> Hotlist:
        """Check a list file's bytes completely (header, size, checksum, order, index)."""
        data = image if isinstance(image, bytes | mmap.mmap) else bytes(image)  # slices must be bytes
        number, count, checksum = _read_store_header(bytes(data[:HEADER_SIZE]), len(data))
        hotlist = cls(number, data, count, checksum, None)
        hotlist.verify()
        return hotlist

    @property
    def version(self) -> str | None:
        """The version as tap records carry it (decimal), None for no list."""
        return None if self.number is None else str(self.number)

    @property
    def checksum(self) -> bytes:
        """SHA-256 of the entries, from the header."""
        return self._checksum

    def verify(self) -> None:
        """Recompute the checksum, the order and the index (O(n)); raises HotlistFormatError."""
        entries = self.entries_view()
        if hashlib.sha256(entries).digest() != self._checksum:
            raise HotlistFormatError("checksum mismatch")
        _check_ascending(entries, "listed")
        stored = memoryview(self._buf)[_index_offset(self._count) :]
        if bytes(stored) != _block_index([entries]):
            raise HotlistFormatError("block index does not match the entries")

    def entries_view(self) -> memoryview:
        """The sorted entries, in place."""
        return memoryview(self._buf)[HEADER_SIZE : HEADER_SIZE + self._count * ENTRY_SIZE]

    def __iter__(self) -> Iterator[bytes]:
        buf = self._buf
        for i in range(self._count):
            at = HEADER_SIZE + i * ENTRY_SIZE
            yield bytes(buf[at : at + ENTRY_SIZE])

    def __len__(self) -> int:
        return self._count

    def __contains__(self, token: object) -> bool:
        if not isinstance(token, bytes | bytearray | memoryview):
            return False
        return self.contains_digest(token_digest(bytes(token)))

    def contains_digest(self, entry: bytes) -> bool:
        """Lookup by entry (the first 16 bytes of a card token)."""
        index = self._index
        top = int.from_bytes(entry[:8], "big")
        block = bisect.bisect_right(index, top) - 1
        if block < 0:
            return False
        while not self._in_block(block, entry):
            # Entries sharing their top 64 bits may straddle a block boundary: look back.
            if block == 0 or index[block] != top:
                return False
            block -= 1
        return True

    def _in_block(self, block: int, entry: bytes) -> bool:
        start = HEADER_SIZE + block * _BLOCK_BYTES
        stop = min(start + _BLOCK_BYTES, HEADER_SIZE + self._count * ENTRY_SIZE)
        chunk = self._buf[start:stop]
        at = chunk.find(entry)
        while at >= 0:
            if at % ENTRY_SIZE == 0:
                return True
            at = chunk.find(entry, at + 1)  # matched across two entries: look on
        return False

    def position(self, entry: bytes) -> int:
        """Index of the first entry >= `entry` (count if none): where it is or would go."""
        buf = self._buf
        lo, hi = 0, self._count
        while lo < hi:
            middle = (lo + hi) // 2
            at = HEADER_SIZE + middle * ENTRY_SIZE
            if buf[at : at + ENTRY_SIZE] < entry:
                lo = middle + 1
            else:
                hi = middle
        return lo

    def memory_bytes(self) -> int:
        """Bytes this version maps or holds (file-backed when mapped: the kernel may drop them)."""
        return _index_offset(self._count) + 8 * _blocks(self._count)


def _blocks(count: int) -> int:
    return -(-count // BLOCK_ENTRIES)


def _index_offset(count: int) -> int:
    return HEADER_SIZE + count * ENTRY_SIZE


def _index_view(buf: _Searchable, count: int) -> Sequence[int]:
    """The block index as a sequence of ints, in place (a copy on a big-endian machine)."""
    raw = memoryview(buf)[_index_offset(count) : _index_offset(count) + 8 * _blocks(count)]
    if sys.byteorder == "little":
        return raw.cast("Q")
    swapped = array.array("Q", raw.tobytes())
    swapped.byteswap()
    return swapped


def _block_index(pieces: Iterable[memoryview]) -> bytes:
    """The index of entries given in runs: top 64 bits of every 64th entry, u64 little-endian."""
    tops = array.array("Q")
    seen = 0
    for piece in pieces:
        size = len(piece) // ENTRY_SIZE
        first = (-seen) % BLOCK_ENTRIES  # the first entry of this run that starts a block
        if first < size:
            tops.extend(piece[first * ENTRY_SIZE :].cast("Q")[:: 2 * BLOCK_ENTRIES])
        seen += size
    # Each word was read in native order from big-endian bytes; one swap gives, on either kind
    # of machine, the little-endian bytes of the value: the entry's first 8 bytes reversed.
    tops.byteswap()
    return tops.tobytes()


def _read_store_header(head: bytes, size: int) -> tuple[int, int, bytes]:
    if len(head) < HEADER_SIZE:
        raise HotlistFormatError("list file too short")
    if head[:4] == MAGIC:
        raise HotlistFormatError(f"a back-office document (format {head[4]}), not a list file")
    magic, fmt, entry_size, block, number, count, checksum = _STORE.unpack_from(head)
    if magic != STORE_MAGIC:
        raise HotlistFormatError("not a hotlist file (bad magic)")
    if fmt != STORE_FORMAT or entry_size != ENTRY_SIZE or block != BLOCK_ENTRIES:
        raise HotlistFormatError(f"unsupported list file format {fmt} / entry size {entry_size} / block {block}")
    if size != _index_offset(count) + 8 * _blocks(count):
        raise HotlistFormatError(f"length {size} does not match {count} entries")
    return number, count, checksum


# --------------------------------------------------------------------------- the list in force


class HotlistStore:
    """The list in force, kept on disk at `path` and swapped atomically on install.

    `version` is what the tap pipeline stamps on every tap record; `etag` is remembered for
    HTTP conditional fetches. `install` takes what the local disk holds (a list file, or a
    signed document when a public key is known); `receive` takes what a hotlist source
    delivered and accepts signed documents only.
    """

    def __init__(self, path: Path, public_key: Ed25519PublicKey | None = None) -> None:
        self._path = Path(path)
        self._etag_path = self._path.with_name(self._path.name + ".etag")
        self._public_key = public_key
        self._lock = threading.Lock()
        self._log = get_logger(component="hotlist", path=str(self._path))
        self._current = Hotlist.empty()
        self._etag: str | None = None
        try:
            self._current = Hotlist.open(self._path)
        except FileNotFoundError:
            pass
        except (HotlistFormatError, OSError, ValueError) as exc:
            # Keep the bad file for inspection; the next download replaces it.
            self._log.error("hotlist_on_disk_unusable", error=str(exc))
        else:
            if self._etag_path.exists():
                self._etag = self._etag_path.read_text().strip() or None
            self._log.info("hotlist_loaded", version=self._current.version, entries=len(self._current))

    @property
    def path(self) -> Path:
        """Where the list file lives."""
        return self._path

    @property
    def current(self) -> Hotlist:
        """The version in force (immutable; keep the reference for a consistent view)."""
        return self._current

    @property
    def version(self) -> str | None:
        """The version in force (decimal), None before any list was received."""
        return self._current.version

    @property
    def number(self) -> int | None:
        """The version in force as a number, None before any list was received."""
        return self._current.number

    @property
    def etag(self) -> str | None:
        """The HTTP entity tag of the document in force, if it came over HTTP."""
        return self._etag

    def is_listed(self, token: bytes) -> bool:
        """True when the 32-byte card token is on the list in force."""
        return self._current.contains_digest(token_digest(token))

    def install(self, document: Buffer, etag: str | None = None) -> Hotlist:
        """Take a list file or (with a public key) a signed document; the old list stays on any error.

        A list file is the operator's choice (SIGHUP after putting it at `path`): any version
        is taken once its checksum and order check out, and the same file again changes nothing.
        """
        if bytes(document[:4]) == MAGIC:
            if self._public_key is None:
                raise HotlistSignatureError("a signed hotlist document, but no public key is configured")
            return self.receive(document, self._public_key, etag)
        current = self._current
        head = bytes(document[:HEADER_SIZE])
        if len(head) == HEADER_SIZE and head[:4] == STORE_MAGIC and current.number is not None:
            number, count, checksum = _read_store_header(head, len(document))
            same_header = (number, count, checksum) == (current.number, len(current), current.checksum)
            if same_header and memoryview(document).cast("B") == memoryview(current._buf):
                with self._lock:
                    self._set_etag(etag)
                return current
        Hotlist.parse(document)  # checked in place before anything is written
        with self._lock:
            _write_atomically(self._path, [memoryview(document)])
            return self._swap(Hotlist.open(self._path), etag)

    def receive(self, document: Buffer, public_key: Ed25519PublicKey, etag: str | None = None) -> Hotlist:
        """Verify a back-office document and apply it; raises HotlistFormatError (or a subclass)."""
        signed = read_signed(document, public_key)
        with self._lock:
            current = self._current
            if signed.is_delta:
                return self._apply_delta(current, signed, etag)
            if current.number is not None and signed.version <= current.number:
                same = signed.version == current.number and signed.count == len(current)
                if same and hashlib.sha256(signed.adds).digest() == current.checksum:
                    self._set_etag(etag)
                    return current  # the list in force, delivered again
                raise HotlistVersionError(
                    f"full list {signed.version} is not newer than the list in force ({current.number})",
                    stale=signed.version < current.number,
                )
            _write_list_file(self._path, signed.version, signed.count, [signed.adds])
            return self._swap(Hotlist.open(self._path), etag)

    def _apply_delta(self, current: Hotlist, delta: SignedDocument, etag: str | None) -> Hotlist:
        if current.number is not None and delta.version <= current.number:
            raise HotlistVersionError(
                f"delta to {delta.version}: the list in force is already {current.number}", stale=True
            )
        if current.number != delta.base:
            raise HotlistVersionError(f"delta applies to {delta.base}, the list in force is {current.number}")
        if len(current) + len(delta.adds) // ENTRY_SIZE - len(delta.removes) // ENTRY_SIZE != delta.count:
            raise HotlistFormatError(
                f"delta count {delta.count} does not match {len(current)} entries"
                f" + {len(delta.adds) // ENTRY_SIZE} - {len(delta.removes) // ENTRY_SIZE}"
            )
        pieces = _merge(current, delta.adds, delta.removes)
        _write_list_file(self._path, delta.version, delta.count, pieces)
        return self._swap(Hotlist.open(self._path), etag)

    def _swap(self, fresh: Hotlist, etag: str | None) -> Hotlist:
        """Make `fresh` the list in force (caller holds the lock and wrote the file)."""
        self._set_etag(etag)
        previous = self._current.version
        self._current = fresh
        if previous != fresh.version:
            self._log.info("hotlist_installed", version=fresh.version, previous=previous, entries=len(fresh))
        _remove_stale_temporaries(self._path)
        return fresh

    def _set_etag(self, etag: str | None) -> None:
        if etag is not None:
            if etag != self._etag:
                _write_atomically(self._etag_path, [memoryview(etag.encode("utf-8"))])
        elif self._etag_path.exists():
            self._etag_path.unlink()
        self._etag = etag


def _merge(current: Hotlist, adds: memoryview, removes: memoryview) -> list[memoryview]:
    """The pieces of the new list: runs of the old one with the adds between them, removes left out.

    Raises HotlistFormatError when a removed entry is not listed or an added one already is.
    Costs O(k log n) lookups for k changes and one copy of the list, done by the file write.
    """
    old = current.entries_view()
    events: list[tuple[int, int, int]] = []  # (position in old, 0 = add before it / 1 = remove it, index)
    for i in range(len(adds) // ENTRY_SIZE):
        entry = bytes(adds[i * ENTRY_SIZE : (i + 1) * ENTRY_SIZE])
        if current.contains_digest(entry):
            raise HotlistFormatError("delta adds an entry that is already listed")
        events.append((current.position(entry), 0, i))
    for i in range(len(removes) // ENTRY_SIZE):
        entry = bytes(removes[i * ENTRY_SIZE : (i + 1) * ENTRY_SIZE])
        if not current.contains_digest(entry):
            raise HotlistFormatError("delta removes an entry that is not listed")
        events.append((current.position(entry), 1, i))
    events.sort()
    pieces: list[memoryview] = []
    cursor = 0
    for position, kind, i in events:
        if position > cursor:
            pieces.append(old[cursor * ENTRY_SIZE : position * ENTRY_SIZE])
        if kind == 0:
            pieces.append(adds[i * ENTRY_SIZE : (i + 1) * ENTRY_SIZE])
            cursor = position
        else:
            cursor = position + 1
    if cursor < len(current):
        pieces.append(old[cursor * ENTRY_SIZE :])
    return pieces


def _write_list_file(path: Path, version: int, count: int, pieces: list[memoryview]) -> None:
    """Write a list file of these entry runs atomically (checksum in the header)."""
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    if sum(len(p) for p in pieces) != count * ENTRY_SIZE:
        raise HotlistFormatError(f"{count} entries declared, {sum(len(p) for p in pieces) // ENTRY_SIZE} present")
    header = memoryview(_store_header(version, count, digest.digest()))
    _write_atomically(path, [header, *pieces, memoryview(_block_index(pieces))])


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_atomically(path: Path, pieces: list[memoryview]) -> None:
    """Write beside `path`, fsync, rename over it, fsync the directory: all of it or none of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for piece in pieces:
            view = piece.cast("B") if piece.format != "B" else piece
            while view:
                written = os.write(fd, view)
                view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files of processes that died mid-write (never read, only in the way)."""
    prefix = f".{path.name}."
    for leftover in path.parent.glob(f"{prefix}*.tmp"):
        pid_text = leftover.name[len(prefix) : -len(".tmp")]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            leftover.unlink(missing_ok=True)
        except PermissionError:
            continue  # alive, another user's
