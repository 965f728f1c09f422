"""Stored conversations for the protocol tests: command/response pairs written from the reference.

Commands are spelled out as the reference gives them (not produced by the code under test),
so a replay that finds no answer means the code sent something other than the reference.
"""

from __future__ import annotations

from protocols.image import Dump, Exchange

SSSE_NAME = "7378312E73682EC9E7BBE1B1A3D5CF"
SSSE_FCI = "6F19840F" + SSSE_NAME + "A5069F0C03860103"
CARD_ID = "330300D15600000599110145FFFFFFFF"
PSAM_AID = "D15600000590"

PUBLIC_15 = "02002900FFFFFFFF03013104000012345678901220200101203012310000"
TUNION_FCI = "6F37 8408A000000632010105 A52B 50084D4F545F545F4550 9F0C1E".replace(" ", "") + PUBLIC_15


def dump(*pairs: tuple[str, str]) -> Dump:
    return Dump(tuple(Exchange(bytes.fromhex(c), bytes.fromhex(r)) for c, r in pairs))


def ef05_before_auth(version: str) -> list[tuple[str, str]]:
    return [
        ("00A404000F" + SSSE_NAME, "611B"),
        ("00C000001B", SSSE_FCI + "9000"),
        ("00A4020002EF05", "9000"),
        ("00B2010012", "0110" + CARD_ID + "9000"),
        ("00B2030006", "0304" + version.encode().hex() + "9000"),
        ("00B207000B", "0709" + b"A12345678".hex() + "9000"),
    ]


def ef05_after_auth() -> list[tuple[str, str]]:
    return [
        ("00B2020003", "0201" + "33" + "9000"),
        ("00B204000E", "040C" + "112233445566778899AABBCC" + "9000"),
        ("00B2050006", "050420200101" + "9000"),
        ("00B2060006", "060420300101" + "9000"),
    ]


def ef06(name_extension_sw: str = "6A83") -> list[tuple[str, str]]:
    name = "张三".encode("gbk").hex() + "00" * 26
    return [
        ("00A4020002EF06", "9000"),
        ("00B2080014", "0812" + b"11010119900101123X".hex() + "9000"),
        ("00B2090020", "091E" + name + "9000"),
        ("00B24E0016", name_extension_sw),
        ("00B20A0003", "0A01" + "31" + "9000"),
        ("00B20B0003", "0B01" + "01" + "9000"),
        ("00B20C0005", "0C03" + "110101" + "9000"),
        ("00B20D0006", "0D04" + "19900101" + "9000"),
    ]
