"""Every bundled card through the real pcscd and vpcd, read and charged by a plain pyscard client.

The card sits in slot 0, the demo PSAM in slot 1; the client is pyscard's low-level API plus
the project's protocol conversations, exactly what a terminal runs.
"""

from __future__ import annotations

import datetime as dt

import pytest

from protocols.ecash import read_ecash
from protocols.exchange import exchange
from protocols.purchase import PurchaseFailure, PurchaseRequest, PurchaseResult, purchase
from protocols.ssse_auth import AuthStep, SsseAuthenticationFailed
from protocols.ssse_read import read_ssse
from protocols.status import ApplicationLocked, InsufficientBalance, MacInvalid
from protocols.tunion import select_tunion
from protocols.tunion_read import read_tunion
from sscard_sim.card import VirtualCard
from sscard_sim.profile import bundled_profiles, load_card_profile
from tests.conftest import SLOT0
from tests.sim.pcsc_client import PcscChannel

CARD_PROFILES = [name for name in bundled_profiles() if not name.endswith("psam")]
WHEN = dt.datetime(2025, 6, 1, 8, 30, 0)
FARE = 200


def test_every_bundled_profile_is_covered() -> None:
    expected = {
        "sichuan",
        "chongqing",
        "expired",
        "locked-transport",
        "no-transport",
        "low-balance",
        "elderly",
        "second-generation",
        "cloned",
    }
    assert expected <= set(CARD_PROFILES)


@pytest.mark.parametrize("name", CARD_PROFILES)
def test_read_and_charge_each_profile(name: str, attach, psam: PcscChannel) -> None:  # type: ignore[no-untyped-def]
    card = VirtualCard.from_profile(name)
    profile = card.profile
    attach(card, SLOT0)
    with PcscChannel(SLOT0) as channel:
        # SSSE: EF05 always; EF06 after the PSAM-backed authentication on 3.00 cards.
        if name == "cloned":
            with pytest.raises(SsseAuthenticationFailed) as failure:
                read_ssse(channel.transmit, psam.transmit)
            assert failure.value.step is AuthStep.PSAM_VERIFY_CARD
        else:
            image = read_ssse(channel.transmit, psam.transmit)
            assert image.card_identification_code == profile.ssse.card_id
            assert image.spec_version == profile.ssse.spec_version
            assert image.card_number == profile.ssse.card_number
            assert image.expiry_date == profile.ssse.expiry_date
            assert image.ef06_read
            assert image.authenticated == profile.ssse.needs_external_auth
            assert image.name == profile.ssse.name
            assert image.social_security_number == profile.ssse.ssn
            assert image.birth_date == profile.ssse.birth_date
            assert image.region_code == profile.ssse.card_id[:3].hex().upper()

        # T-Union: files, purse, logs; absent or locked where the profile says so.
        tunion = profile.tunion
        if tunion is None:
            assert read_tunion(channel.transmit) is None
        elif tunion.locked:
            with pytest.raises(ApplicationLocked):
                read_tunion(channel.transmit)
            assert exchange(channel.transmit, select_tunion()).sw == 0x9303
        else:
            before = read_tunion(channel.transmit, capp_record_ids=tunion.capp_record_ids)
            assert before is not None
            assert before.public == tunion.public
            assert before.holder == tunion.holder
            assert before.management == tunion.management
            assert before.balance == tunion.balance + tunion.overdraft_limit
            assert before.transactions == tunion.transactions
            assert len(before.capp_records) == len(tunion.capp_record_ids)
            _charge(channel, psam, name, before.balance)

        if profile.ecash is not None:
            ecash = read_ecash(channel.transmit)
            assert ecash is not None and ecash.balance == profile.ecash.balance


def _charge(channel: PcscChannel, psam: PcscChannel, name: str, balance_before: int) -> None:
    result = purchase(channel.transmit, psam.transmit, PurchaseRequest(FARE, WHEN))
    if name == "low-balance":
        assert isinstance(result, PurchaseFailure)
        assert isinstance(result.cause, InsufficientBalance)
        return
    assert isinstance(result, PurchaseResult)
    assert len(result.tac) == 4
    if name == "cloned":
        assert not result.mac2_verified
        assert isinstance(result.mac2_error, MacInvalid)
        return
    assert result.mac2_verified, result.mac2_error
    after = read_tunion(channel.transmit)
    assert after is not None
    assert after.balance == balance_before - FARE
    newest = after.transactions[0]
    assert newest.atc == result.offline_atc + 1
    assert (newest.amount, newest.transaction_type, newest.time) == (FARE, 0x09, WHEN)
    assert newest.terminal_id == result.terminal_id == bytes.fromhex("510100000001")


def test_profiles_are_fictitious() -> None:
    for name in CARD_PROFILES:
        profile = load_card_profile(name)
        assert profile.ssse.name.startswith("测试")
        assert profile.ssse.ssn[14:17] == "999"
        assert profile.ssse.card_number.startswith("T999")
