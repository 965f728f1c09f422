"""SM4 cryptography of the virtual card and PSAM: key diversification, MAC1, MAC2, TAC, SSSE auth.

The third-generation card runs its symmetric cryptography on SM4 (GB/T 32907, 128-bit key,
128-bit block). The normative texts (JT/T 978, LD/T 32.4, the PBOC 3.0 SM4 parts) are not
public, so the scheme below is this project's convention. Where PBOC e-purse practice is
known, it is followed; every point marked "our choice" is a decision of this project that
a real issuer's cards may make differently. Both sides of every computation (card and PSAM)
live in this module, so they cannot drift apart.

Notation: ``||`` concatenation, ``~F`` bitwise complement, ``SM4(K, X)`` one SM4-ECB block
encryption, numbers big-endian.

Padding and MAC (PBOC practice, ISO/IEC 9797-1 padding method 2 and MAC algorithm 1, carried
over from 8-byte DES blocks to 16-byte SM4 blocks):
    pad(D)      = D || 80 || 00...00 up to a multiple of 16 (80 is always appended)
    MAC(K, D)   = leftmost 4 bytes of the SM4-CBC encryption of pad(D), IV = 16 x 00

Key diversification (PBOC practice for a double-length key; with SM4 one block gives the
whole 16-byte key):
    diversify(MK, F) = SM4(MK, F || ~F)           for an 8-byte factor F
    diversify(MK, F) = SM4(MK, F)                 for a 16-byte factor F (our choice)

T-Union e-purse (JT/T 978 follows PBOC here):
    F                = application serial number: bytes 12..19 of SFI 0x15 (the last 8 bytes
                       of the 10-byte serial, the "卡应用序列号" the PSAM receives in 80 70)
    DPK              = diversify(MPK[key version], F)      purchase key
    DTK              = diversify(MTK[key version], F)      TAC key
    SESPK            = SM4(DPK, random(4) || offline ATC(2) || terminal seq(4) || 80 00 00 00 00 00)
                       PBOC takes random || ATC || the last 2 bytes of the terminal sequence as
                       one 8-byte DES block; with a 16-byte block the whole 4-byte sequence fits,
                       padded by method 2 (our choice)
    MAC1             = MAC(SESPK, amount(4) || type(1) || terminal no.(6) || date(4) || time(3))
    MAC2             = MAC(SESPK, amount(4))
    TAC              = MAC(DTK, amount(4) || type(1) || terminal no.(6) || terminal seq(4)
                           || date(4) || time(3))
                       PBOC uses the XOR of the two halves of a double-length DES TAC key; SM4
                       has no halves, DTK is used whole (our choice)
    The offline ATC in SESPK is the one INITIALIZE FOR PURCHASE returned (before the debit
    increments it); "type" is 06 for a simple purchase and 09 for a CAPP purchase. The PSAM's
    issuer-identifier field is carried but does not enter the diversification (one level,
    our choice; PBOC PSAMs may diversify first by issuer).

SSSE (social security application; LD/T 32.4 section 10.3 on diversification factors is not
public, all of this is our choice):
    F                = card identification code (EF05 tag 01, 16 bytes), readable before any
                       authentication, used whole as one SM4 block
    KIA              = diversify(MIA, F)       internal authentication key
    KEA              = diversify(RKSSSE, F)    external authentication key (P2 = 0A)
    INTERNAL AUTHENTICATE: the terminal sends 16 bytes (8-byte process factor || 8-byte random);
        the card answers SM4(KIA, data) (16 bytes); the terminal's PSAM computes the same.
    EXTERNAL AUTHENTICATE: the card's last GET CHALLENGE answer R (4, 8 or 16 bytes); the
        cryptogram is SM4(KEA, R) for a 16-byte R, SM4(KEA, pad(R)) otherwise. A card accepts
        one cryptogram per challenge.

Master keys are data, never code: the demo and test key sets live in key files beside the
card profiles (`sscard_sim/profiles/*-keys.toml`), which no production terminal loads.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 16
KEY_SIZE = 16
MAC_SIZE = 4

TRANS_SIMPLE_PURCHASE = 0x06
TRANS_CAPP_PURCHASE = 0x09


class CryptoInputError(ValueError):
    """A key or a factor of the wrong size reached the cryptography."""


def _check_key(key: bytes, what: str) -> None:
    if len(key) != KEY_SIZE:
        raise CryptoInputError(f"{what}: an SM4 key is {KEY_SIZE} bytes, got {len(key)}")


def sm4_encrypt(key: bytes, block: bytes) -> bytes:
    """Encrypt blocks with SM4-ECB (each 16-byte block on its own)."""
    _check_key(key, "sm4_encrypt")
    if not block or len(block) % BLOCK:
        raise CryptoInputError(f"sm4_encrypt: input must be whole 16-byte blocks, got {len(block)} bytes")
    encryptor = Cipher(algorithms.SM4(key), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def sm4_decrypt(key: bytes, block: bytes) -> bytes:
    """Decrypt whole SM4-ECB blocks (the inverse of `sm4_encrypt`)."""
    _check_key(key, "sm4_decrypt")
    if not block or len(block) % BLOCK:
        raise CryptoInputError(f"sm4_decrypt: input must be whole 16-byte blocks, got {len(block)} bytes")
    decryptor = Cipher(algorithms.SM4(key), modes.ECB()).decryptor()
    return decryptor.update(block) + decryptor.finalize()


def pad(data: bytes) -> bytes:
    """ISO/IEC 9797-1 method 2: append 80, then 00 up to a whole number of blocks."""
    padded = data + b"\x80"
    return padded + bytes(-len(padded) % BLOCK)


def mac(key: bytes, data: bytes) -> bytes:
    """The 4-byte PBOC-style CBC-MAC over pad(data) with SM4 and a zero IV."""
    _check_key(key, "mac")
    encryptor = Cipher(algorithms.SM4(key), modes.CBC(bytes(BLOCK))).encryptor()
    chained = encryptor.update(pad(data)) + encryptor.finalize()
    return chained[-BLOCK:][:MAC_SIZE]


def macs_equal(left: bytes, right: bytes) -> bool:
    """Compare two MACs in constant time (a card must not leak where they differ)."""
    return hmac.compare_digest(left, right)


def diversify(master: bytes, factor: bytes) -> bytes:
    """A per-card key from a master key and an 8-byte (F || ~F) or 16-byte factor."""
    if len(factor) == 8:
        block = factor + bytes(b ^ 0xFF for b in factor)
    elif len(factor) == BLOCK:
        block = factor
    else:
        raise CryptoInputError(f"diversify: a factor is 8 or 16 bytes, got {len(factor)}")
    return sm4_encrypt(master, block)


def purchase_session_key(dpk: bytes, card_random: bytes, offline_atc: int, terminal_seq: int) -> bytes:
    """SESPK from the card's random number, its offline ATC and the PSAM's transaction sequence."""
    if len(card_random) != 4:
        raise CryptoInputError(f"purchase_session_key: the card random is 4 bytes, got {len(card_random)}")
    seed = card_random + offline_atc.to_bytes(2, "big") + terminal_seq.to_bytes(4, "big")
    return sm4_encrypt(dpk, pad(seed))


@dataclass(frozen=True)
class PurchaseData:
    """What MAC1 and TAC protect: the terms of one purchase as the terminal states them."""

    amount: int
    trans_type: int
    terminal_id: bytes
    date: bytes
    time: bytes

    def mac1_input(self) -> bytes:
        return (
            self.amount.to_bytes(4, "big")
            + bytes([self.trans_type])
            + self.terminal_id
            + self.date
            + self.time
        )

    def tac_input(self, terminal_seq: int) -> bytes:
        return (
            self.amount.to_bytes(4, "big")
            + bytes([self.trans_type])
            + self.terminal_id
            + terminal_seq.to_bytes(4, "big")
            + self.date
            + self.time
        )


def mac1(session_key: bytes, purchase: PurchaseData) -> bytes:
    """MAC1: made by the PSAM, checked by the card before it debits."""
    return mac(session_key, purchase.mac1_input())


def mac2(session_key: bytes, amount: int) -> bytes:
    """MAC2: made by the card after the debit, checked by the PSAM (80 72)."""
    return mac(session_key, amount.to_bytes(4, "big"))


def tac(dtk: bytes, purchase: PurchaseData, terminal_seq: int) -> bytes:
    """TAC: made by the card with its TAC key, kept by the terminal for clearing."""
    return mac(dtk, purchase.tac_input(terminal_seq))


def internal_auth_response(kia: bytes, data: bytes) -> bytes:
    """The card's answer to INTERNAL AUTHENTICATE (16 bytes in, 16 out)."""
    if len(data) != BLOCK:
        raise CryptoInputError(f"internal_auth_response: 16 bytes expected, got {len(data)}")
    return sm4_encrypt(kia, data)


def external_auth_cryptogram(kea: bytes, challenge: bytes) -> bytes:
    """The 16-byte cryptogram EXTERNAL AUTHENTICATE carries for the card's last challenge."""
    if len(challenge) not in (4, 8, BLOCK):
        raise CryptoInputError(f"external_auth_cryptogram: a challenge is 4, 8 or 16 bytes, got {len(challenge)}")
    block = challenge if len(challenge) == BLOCK else pad(challenge)
    return sm4_encrypt(kea, block)
