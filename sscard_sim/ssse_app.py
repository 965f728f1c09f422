"""The social security application (SSSE) of the virtual card: EF05, EF06 and authentication.

EF05 (card data, items 01..07) and EF06 (holder data, items 08, 09, 4E, 0A..0D) are record
files whose records are `tag length value`; READ RECORD reaches them by record number or by
identifier (the tag), through the current EF or a short file identifier (cards.md §1.2).

The 3.00 access rule: on a card whose specification version is 3.00, EF06 answers 6982 until
EXTERNAL AUTHENTICATE with the RKSSSE key (P2 0A) has succeeded in this selection of the
SSSE; a second-generation card (2.00) lets EF06 be read freely. Failed external
authentications count down a persistent try counter (63Cx); once it reaches zero the key
is blocked (6983), as a real card protects its keys against guessing. A clone
(`verifies_terminal` false) has no key to check the cryptogram with and accepts any.
"""

from __future__ import annotations

from collections.abc import Callable

from protocols.apdu import CommandApdu
from protocols.fci import Fci
from protocols.ssse import EF05, EF06, RKSSSE_KEY_ID, SSSE_DF_NAME, build_item_record, item
from protocols.tlv import Tlv
from sscard_sim import crypto
from sscard_sim.cos import Refusal, exact_le
from sscard_sim.keys import CardSsseKeys
from sscard_sim.profile import SsseProfile
from sscard_sim.state import MemoryStore

SFI_EF05 = 0x05
SFI_EF06 = 0x06
EF_BY_ID = {EF05: SFI_EF05, EF06: SFI_EF06}


def ef05_records(profile: SsseProfile) -> tuple[bytes, ...]:
    """EF05 as personalised, in record-number order."""
    return tuple(
        build_item_record(record)
        for record in (
            item("card_identification_code", profile.card_id),
            item("card_type", profile.card_type),
            item("spec_version", profile.spec_version),
            item("initialising_institution", profile.init_org),
            item("issue_date", profile.issue_date),
            item("expiry_date", profile.expiry_date),
            item("card_number", profile.card_number),
        )
    )


def ef06_records(profile: SsseProfile) -> tuple[bytes, ...]:
    """EF06 as personalised: the name extension (4E) is record 3 when the card has one."""
    records = [item("social_security_number", profile.ssn), item("name", profile.name)]
    if profile.name_extension is not None:
        records.append(item("name_extension", profile.name_extension))
    records += [
        item("sex", profile.sex),
        item("ethnicity", profile.ethnicity),
        item("birthplace", profile.birthplace),
        item("birth_date", profile.birth_date),
    ]
    return tuple(build_item_record(record) for record in records)


class SsseApp:
    """The SSSE directory (DF name "sx1.sh." + GBK 社会保障)."""

    name = "SSSE"

    def __init__(
        self,
        profile: SsseProfile,
        keys: CardSsseKeys,
        store: MemoryStore,
        take_challenge: Callable[[], bytes | None],
        max_tries: int,
        verifies_terminal: bool = True,
    ) -> None:
        self.profile = profile
        self.aid = SSSE_DF_NAME
        self.keys = keys
        self.store = store
        self.take_challenge = take_challenge
        self.max_tries = max_tries
        self.verifies_terminal = verifies_terminal
        self.answers_select_with_61 = profile.answers_select_with_61
        self.files = {SFI_EF05: ef05_records(profile), SFI_EF06: ef06_records(profile)}
        self.current_ef: int | None = None
        self.authenticated = False

    def select(self) -> bytes:
        algorithm = Tlv(0x86, bytes((self.profile.algorithm_id,))).to_bytes()
        return Fci.create(self.aid, issuer_data=algorithm).to_bytes()

    def deselect(self) -> None:
        self.current_ef = None
        self.authenticated = False

    def handle(self, command: CommandApdu) -> bytes:
        key = (command.cla, command.ins)
        if key == (0x00, 0xA4):
            return self._select_ef(command)
        if key == (0x00, 0xB2):
            return self._read_record(command)
        if key == (0x00, 0x88):
            return self._internal_authenticate(command)
        if key == (0x00, 0x82):
            return self._external_authenticate(command)
        raise Refusal(0x6D00 if command.cla in (0x00, 0x80) else 0x6E00)

    def _select_ef(self, command: CommandApdu) -> bytes:
        if command.p1 not in (0x00, 0x02) or len(command.data) != 2:
            raise Refusal(0x6A86)
        sfi = EF_BY_ID.get(command.data)
        if sfi is None:
            raise Refusal(0x6A82)
        self.current_ef = sfi
        return b""

    def _read_record(self, command: CommandApdu) -> bytes:
        sfi = command.p2 >> 3 or self.current_ef
        if sfi is None:
            raise Refusal(0x6986)
        records = self.files.get(sfi)
        if records is None:
            raise Refusal(0x6A82)
        self.current_ef = sfi
        if sfi == SFI_EF06 and self.profile.needs_external_auth and not self.authenticated:
            raise Refusal(0x6982)
        mode = command.p2 & 0x07
        if mode == 0x04:
            if not 1 <= command.p1 <= len(records):
                raise Refusal(0x6A83)
            return exact_le(records[command.p1 - 1], command)
        if mode == 0x00:
            for record in records:
                if record[0] == command.p1:
                    return exact_le(record, command)
            raise Refusal(0x6A83)
        raise Refusal(0x6A86)

    def _internal_authenticate(self, command: CommandApdu) -> bytes:
        if len(command.data) != crypto.BLOCK:
            raise Refusal(0x6700)
        return exact_le(crypto.internal_auth_response(self.keys.internal, command.data), command)

    def _external_authenticate(self, command: CommandApdu) -> bytes:
        if command.p2 != RKSSSE_KEY_ID:
            raise Refusal(0x6A88)
        memory = self.store.memory
        if memory.external_auth_tries <= 0:
            raise Refusal(0x6983)
        if len(command.data) != crypto.BLOCK:
            raise Refusal(0x6700)
        challenge = self.take_challenge()
        if challenge is None:
            raise Refusal(0x6985)
        expected = crypto.external_auth_cryptogram(self.keys.external, challenge)
        if crypto.macs_equal(expected, command.data) or not self.verifies_terminal:
            if memory.external_auth_tries != self.max_tries:
                self.store.commit(memory.with_changes(external_auth_tries=self.max_tries))
            self.authenticated = True
            return b""
        left = memory.external_auth_tries - 1
        self.store.commit(memory.with_changes(external_auth_tries=left))
        raise Refusal(0x63C0 | left)
