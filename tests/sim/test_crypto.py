"""The SM4 scheme of sscard_sim.crypto against vectors derived outside the module.

The cipher is checked on the GB/T 32907 example vectors. Everything above it (padding, MAC,
diversification, session key, MAC1, MAC2, TAC, SSSE authentication) is re-derived here from
the scheme as the module docstring states it, block by block on raw SM4-ECB, so that a change
to the module that departs from its documented scheme fails here.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocols.purchase import PurchaseRequest, PurchaseResult, purchase
from sscard_sim import crypto
from sscard_sim.card import VirtualCard
from sscard_sim.keys import load_master_keys
from sscard_sim.profile import PROFILE_DIR
from sscard_sim.psam import VirtualPsam

GBT_KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")


def ecb(key: bytes, block: bytes) -> bytes:
    encryptor = Cipher(algorithms.SM4(key), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def reference_mac(key: bytes, data: bytes) -> bytes:
    """ISO 9797-1 method 2 padding, CBC chaining by hand, leftmost 4 bytes."""
    padded = data + b"\x80"
    while len(padded) % 16:
        padded += b"\x00"
    state = bytes(16)
    for start in range(0, len(padded), 16):
        block = bytes(a ^ b for a, b in zip(state, padded[start : start + 16], strict=True))
        state = ecb(key, block)
    return state[:4]


def test_sm4_gbt32907_example_1() -> None:
    assert crypto.sm4_encrypt(GBT_KEY, GBT_KEY).hex() == "681edf34d206965e86b3e94f536e4246"
    assert crypto.sm4_decrypt(GBT_KEY, bytes.fromhex("681edf34d206965e86b3e94f536e4246")) == GBT_KEY


def test_sm4_gbt32907_example_2_million_encryptions() -> None:
    encryptor = Cipher(algorithms.SM4(GBT_KEY), modes.ECB()).encryptor()
    block = GBT_KEY
    for _ in range(1_000_000):
        block = encryptor.update(block)
    assert block.hex() == "595298c7c6fd271f0402f804c33d3f66"


@pytest.mark.parametrize("length", [0, 1, 4, 15, 16, 17, 31, 32, 40])
def test_padding_always_appends_80_to_whole_blocks(length: int) -> None:
    data = bytes(range(length))
    padded = crypto.pad(data)
    assert len(padded) % 16 == 0
    assert padded[: len(data)] == data
    assert padded[len(data)] == 0x80
    assert set(padded[len(data) + 1 :]) <= {0}
    assert len(padded) - len(data) <= 16


@pytest.mark.parametrize("length", [0, 4, 15, 16, 18, 33])
def test_mac_is_cbc_mac_of_padded_data(length: int) -> None:
    key = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
    data = bytes((i * 7 + 3) & 0xFF for i in range(length))
    assert crypto.mac(key, data) == reference_mac(key, data)


def test_diversification_of_8_and_16_byte_factors() -> None:
    master = bytes.fromhex("24974B915A464FE76BF41DB417ED62A7")
    factor8 = bytes.fromhex("4510100000009991")
    complement = bytes(b ^ 0xFF for b in factor8)
    assert crypto.diversify(master, factor8) == ecb(master, factor8 + complement)
    factor16 = bytes.fromhex("510100D15600000599910001FFFFFFFF")
    assert crypto.diversify(master, factor16) == ecb(master, factor16)
    with pytest.raises(crypto.CryptoInputError):
        crypto.diversify(master, b"\x01\x02\x03")


def test_fixed_vectors_of_the_purchase_scheme() -> None:
    """Recorded once from the reference derivation above; any change of scheme breaks them."""
    mpk = bytes.fromhex("24974B915A464FE76BF41DB417ED62A7")
    mtk = bytes.fromhex("2007206250056789D54EC27110EF2074")
    serial8 = bytes.fromhex("4510100000009991")
    dpk = ecb(mpk, serial8 + bytes(b ^ 0xFF for b in serial8))
    dtk = ecb(mtk, serial8 + bytes(b ^ 0xFF for b in serial8))
    random4, atc, sequence = bytes.fromhex("A1B2C3D4"), 0x0011, 0x00000005
    session = ecb(dpk, random4 + atc.to_bytes(2, "big") + sequence.to_bytes(4, "big") + b"\x80" + bytes(5))
    purchase = crypto.PurchaseData(
        amount=200,
        trans_type=0x09,
        terminal_id=bytes.fromhex("510100000001"),
        date=bytes.fromhex("20250601"),
        time=bytes.fromhex("083000"),
    )
    mac1_data = bytes.fromhex("000000C80951010000000120250601083000")
    tac_data = bytes.fromhex("000000C8095101000000010000000520250601083000")
    assert crypto.purchase_session_key(dpk, random4, atc, sequence) == session
    assert crypto.mac1(session, purchase) == reference_mac(session, mac1_data)
    assert crypto.mac2(session, 200) == reference_mac(session, bytes.fromhex("000000C8"))
    assert crypto.tac(dtk, purchase, sequence) == reference_mac(dtk, tac_data)
    assert dpk.hex().upper() == RECORDED["dpk"]
    assert crypto.mac1(session, purchase).hex().upper() == RECORDED["mac1"]
    assert crypto.mac2(session, 200).hex().upper() == RECORDED["mac2"]
    assert crypto.tac(dtk, purchase, sequence).hex().upper() == RECORDED["tac"]


RECORDED = {
    "dpk": "71E0C127061DB5C4CC71364F10FF8EE8",
    "mac1": "1AA4AE96",
    "mac2": "2C914E4D",
    "tac": "646DE069",
}


def test_ssse_authentication_blocks() -> None:
    kia = bytes.fromhex("EE34FAF5D9731654E319B9A1F4EB252C")
    challenge16 = bytes(range(16))
    assert crypto.internal_auth_response(kia, challenge16) == ecb(kia, challenge16)
    assert crypto.external_auth_cryptogram(kia, challenge16) == ecb(kia, challenge16)
    challenge8 = bytes(range(8))
    assert crypto.external_auth_cryptogram(kia, challenge8) == ecb(kia, challenge8 + b"\x80" + bytes(7))


class CountingRandom:
    """Deterministic 'random' bytes so the card's answers can be predicted."""

    def __init__(self, seed: int) -> None:
        self.next = seed

    def __call__(self, size: int) -> bytes:
        out = bytes((self.next + i) & 0xFF for i in range(size))
        self.next += size
        return out


def test_card_and_psam_produce_what_the_documented_scheme_predicts() -> None:
    """A whole purchase in process; MAC2 and TAC re-derived from the key file alone."""
    card = VirtualCard.from_profile("sichuan", random=CountingRandom(0x40))
    psam = VirtualPsam.from_profile("demo-psam")
    card.power_on()
    psam.power_on()
    when = dt.datetime(2025, 6, 1, 8, 30, 0)
    result = purchase(card.transmit, psam.transmit, PurchaseRequest(amount=200, time=when))
    assert isinstance(result, PurchaseResult)
    assert result.mac2_verified

    masters = load_master_keys(PROFILE_DIR / "demo-keys.toml")
    serial8 = bytes.fromhex("03104510100000009991")[2:]
    dpk = ecb(masters.purchase[1].mpk, serial8 + bytes(b ^ 0xFF for b in serial8))
    dtk = ecb(masters.purchase[1].mtk, serial8 + bytes(b ^ 0xFF for b in serial8))
    random4 = bytes((0x40, 0x41, 0x42, 0x43))
    seed = random4 + (17).to_bytes(2, "big") + result.terminal_sequence.to_bytes(4, "big")
    session = ecb(dpk, seed + b"\x80" + bytes(5))
    terminal = bytes.fromhex("510100000001")
    stamp = bytes.fromhex("20250601083000")
    sequence = result.terminal_sequence.to_bytes(4, "big")
    assert result.mac2 == reference_mac(session, (200).to_bytes(4, "big"))
    assert result.tac == reference_mac(dtk, (200).to_bytes(4, "big") + b"\x09" + terminal + sequence + stamp)
