"""File Control Information templates: what SELECT answers with (ISO 7816-4, EMV PPSE).

    6F FCI template
       84 DF name
       A5 proprietary template
          50 application label, 87 priority, 9F08 application version,
          9F0C issuer discretionary data (T-Union: the 30-byte 0x15 layout;
                                          SSSE: 86 01 xx, the algorithm id)
          BF0C issuer discretionary template
             61 directory entry: 4F AID, 50 label, 87 priority

An `Fci` keeps the objects in the order the card sent them, so build(parse(x)) == x even
for cards that order or extend the template in their own way; `Fci.create` builds the
canonical order for a virtual card. Parsing validates everything the typed accessors read,
so the accessors themselves never fail.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.errors import BadEncoding, BadLength, UnexpectedTag
from protocols.tlv import Tlv, TlvAt, build_tlvs, find, iter_tlvs, parse_tlv

TAG_FCI = 0x6F
TAG_DF_NAME = 0x84
TAG_PROPRIETARY = 0xA5
TAG_LABEL = 0x50
TAG_PRIORITY = 0x87
TAG_APP_VERSION = 0x9F08
TAG_ISSUER_DATA = 0x9F0C
TAG_DISCRETIONARY = 0xBF0C
TAG_DIRECTORY_ENTRY = 0x61
TAG_AID = 0x4F

_FCI = "FCI"


def _label(value: bytes) -> str:
    return value.decode("ascii")


@dataclass(frozen=True)
class DirectoryEntry:
    """One 61 entry of a PPSE answer: an application the terminal may select."""

    items: tuple[Tlv, ...]

    @property
    def aid(self) -> bytes:
        found = find(self.items, TAG_AID)
        assert found is not None  # parse guarantees it
        return found.value

    @property
    def label(self) -> str | None:
        found = find(self.items, TAG_LABEL)
        return None if found is None else _label(found.value)

    @property
    def priority(self) -> int | None:
        found = find(self.items, TAG_PRIORITY)
        return None if found is None else found.value[0]

    def to_tlv(self) -> Tlv:
        return Tlv(TAG_DIRECTORY_ENTRY, build_tlvs(self.items))

    @classmethod
    def create(cls, aid: bytes, label: str | None = None, priority: int | None = None) -> DirectoryEntry:
        items = [Tlv(TAG_AID, aid)]
        if label is not None:
            items.append(Tlv(TAG_LABEL, label.encode("ascii")))
        if priority is not None:
            items.append(Tlv(TAG_PRIORITY, bytes((priority,))))
        return cls(tuple(items))


@dataclass(frozen=True)
class Fci:
    """A parsed 6F template; `items` are its children in card order."""

    items: tuple[Tlv, ...]

    @property
    def df_name(self) -> bytes:
        found = find(self.items, TAG_DF_NAME)
        assert found is not None  # parse guarantees it
        return found.value

    @property
    def proprietary(self) -> tuple[Tlv, ...]:
        found = find(self.items, TAG_PROPRIETARY)
        return () if found is None else found.children()

    def _in_proprietary(self, tag: int) -> Tlv | None:
        return find(self.proprietary, tag)

    @property
    def label(self) -> str | None:
        found = self._in_proprietary(TAG_LABEL)
        return None if found is None else _label(found.value)

    @property
    def priority(self) -> int | None:
        found = self._in_proprietary(TAG_PRIORITY)
        return None if found is None else found.value[0]

    @property
    def app_version(self) -> bytes | None:
        found = self._in_proprietary(TAG_APP_VERSION)
        return None if found is None else found.value

    @property
    def issuer_data(self) -> bytes | None:
        """Tag 9F0C; its layout depends on the application (see the module docstring)."""
        found = self._in_proprietary(TAG_ISSUER_DATA)
        return None if found is None else found.value

    @property
    def directory(self) -> tuple[DirectoryEntry, ...]:
        found = self._in_proprietary(TAG_DISCRETIONARY)
        if found is None:
            return ()
        return tuple(DirectoryEntry(entry.children()) for entry in found.children() if entry.tag == TAG_DIRECTORY_ENTRY)

    def to_bytes(self) -> bytes:
        return Tlv(TAG_FCI, build_tlvs(self.items)).to_bytes()

    @classmethod
    def create(
        cls,
        df_name: bytes,
        *,
        label: str | None = None,
        priority: int | None = None,
        app_version: bytes | None = None,
        issuer_data: bytes | None = None,
        directory: tuple[DirectoryEntry, ...] = (),
        extra: tuple[Tlv, ...] = (),
    ) -> Fci:
        """The canonical template a virtual card answers SELECT with."""
        proprietary: list[Tlv] = []
        if label is not None:
            proprietary.append(Tlv(TAG_LABEL, label.encode("ascii")))
        if priority is not None:
            proprietary.append(Tlv(TAG_PRIORITY, bytes((priority,))))
        if app_version is not None:
            proprietary.append(Tlv(TAG_APP_VERSION, app_version))
        if issuer_data is not None:
            proprietary.append(Tlv(TAG_ISSUER_DATA, issuer_data))
        if directory:
            entries = tuple(entry.to_tlv() for entry in directory)
            proprietary.append(Tlv.of(TAG_DISCRETIONARY, *entries))
        proprietary.extend(extra)
        return cls((Tlv(TAG_DF_NAME, df_name), Tlv.of(TAG_PROPRIETARY, *proprietary)))


def _check_label(item: TlvAt, structure: str) -> None:
    value = item.tlv.value
    for index, byte in enumerate(value):
        if not 0x20 <= byte <= 0x7E:
            raise BadEncoding(structure, "50", item.value_offset + index, f"label byte {byte:02X} is not ASCII")
    if not 1 <= len(value) <= 16:
        raise BadLength(structure, "50", item.offset, f"label of {len(value)} bytes (1..16)")


def _check_priority(item: TlvAt, structure: str) -> None:
    if len(item.tlv.value) != 1:
        raise BadLength(structure, "87", item.offset, f"priority of {len(item.tlv.value)} bytes, expected 1")


def _check_entry(entry: TlvAt, structure: str) -> None:
    has_aid = False
    for item in iter_tlvs(entry.tlv.value, structure, entry.value_offset):
        if item.tlv.tag == TAG_AID:
            if not 5 <= len(item.tlv.value) <= 16:
                raise BadLength(structure, "4F", item.offset, f"AID of {len(item.tlv.value)} bytes (5..16)")
            has_aid = True
        elif item.tlv.tag == TAG_LABEL:
            _check_label(item, structure)
        elif item.tlv.tag == TAG_PRIORITY:
            _check_priority(item, structure)
    if not has_aid:
        raise UnexpectedTag(structure, "4F", entry.offset, "directory entry 61 without AID 4F")


def _check_proprietary(a5: TlvAt, structure: str) -> None:
    for item in iter_tlvs(a5.tlv.value, structure, a5.value_offset):
        tag = item.tlv.tag
        if tag == TAG_LABEL:
            _check_label(item, structure)
        elif tag == TAG_PRIORITY:
            _check_priority(item, structure)
        elif tag == TAG_DISCRETIONARY:
            for entry in iter_tlvs(item.tlv.value, structure, item.value_offset):
                if entry.tlv.tag == TAG_DIRECTORY_ENTRY:
                    _check_entry(entry, structure)
                elif entry.tlv.constructed:
                    tuple(iter_tlvs(entry.tlv.value, structure, entry.value_offset))


def parse_fci(data: bytes, structure: str = _FCI) -> Fci:
    """Parse and validate a SELECT answer (data only, without the status word)."""
    outer = parse_tlv(data, structure)
    if outer.tag != TAG_FCI:
        raise UnexpectedTag(structure, "tag", 0, f"tag {outer.tag:02X}, expected 6F")
    value_offset = len(data) - len(outer.value)
    seen_name = False
    seen_a5 = False
    items: list[Tlv] = []
    for item in iter_tlvs(outer.value, structure, value_offset):
        tag = item.tlv.tag
        if tag == TAG_DF_NAME:
            if seen_name:
                raise UnexpectedTag(structure, "84", item.offset, "second DF name")
            if not 1 <= len(item.tlv.value) <= 16:
                raise BadLength(structure, "84", item.offset, f"DF name of {len(item.tlv.value)} bytes (1..16)")
            seen_name = True
        elif tag == TAG_PROPRIETARY:
            if seen_a5:
                raise UnexpectedTag(structure, "A5", item.offset, "second proprietary template")
            _check_proprietary(item, structure)
            seen_a5 = True
        items.append(item.tlv)
    if not seen_name:
        raise UnexpectedTag(structure, "84", value_offset, "FCI without DF name 84")
    return Fci(tuple(items))
