"""Fixed vectors from public sources: card answers as published, with the values the source states.

Hex read from public code and documents is data; each group names its source. The expected
values are those the source states (in a test assertion, a comment, a worked example, or the
offsets its own parser reads), never values computed by this project's layouts.

Sources:
- FLP: tkerby/flipperzero-firmware-wPlugins, applications/external/t_union_master/
  docs/card_data_format.md (T-Union Master), worked examples as quoted in cards.md §2.3/§2.4.
- NFSEE: nfcim/nfsee at 7f4db99b8c5a9a0eeb46856844eacd48d7b28528, tests/reader-mock.js (mock
  card answers); field offsets as assets/read.js reads them (log: number 0-1, amount 5-8,
  type 9, terminal 10-15, date-time 16-22; balance modulo 0x80000000; 0x15 number bytes 10-19,
  dates 20-27; 0x17 province bytes 4-5, city 6-7, kind byte 10).
- TUR: HaoTian22/TU-Reader at ad09bbf0efc6a6e6aefadc122b3f380043c9089e, app/src/test/java/com/
  example/nfctransit/data/YctRealCardTest.kt (a real Lingnan Pass card with a T-Union EP),
  TuTransactionAssociationTest.kt, CardMetadataParserTest.kt, and .../EpBalanceTest.kt
  (caf02a90cac428b1dc36e3a4976a49394797e233).
- EMU: a public terminal-emulation serial script (Python/tkinter "SerialAssistant", a public
  GitHub file, stored index id 42560666605) that replays a reader's INITIALIZE FOR CAPP
  PURCHASE + UPDATE CAPP DATA CACHE frame `80DC12D080` with a real-layout 128-byte 0x1A record.
- SHM: fengyuruhui98/File at 1563316ebefdadd348af83f75fb6a7c8754237a1, Work/shanghai/
  shanghai-agm-V5.19-release/shapi/sh_transport_operation.c (entry writes bytes 14=01,
  15-16=SH_CODE_CITY 2900, 120=41, 122=55, 123=00 of rail record 01, then CRC32 over 6..123 at
  124..127) and shapi/crc.c (reflected CRC-32, poly 04C11DB7, init and xor-out FFFFFFFF),
  misc/km_api.c (LongToByte: big-endian).
- CRC: the CRC catalogue's check value of CRC-32/ISO-HDLC over ASCII "123456789": CBF43926.
- REF: cards.md §1.3 (EF05 examples from an Evolis code comment and the HIQ header, yxsylyh/
  hiquotion_cpp) and §2.2 (City Union FCI, https://www.cnblogs.com/ziyan22/p/17022553.html).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

FLP = "FLP docs/card_data_format.md"
NFSEE = "NFSEE tests/reader-mock.js"
TUR = "TU-Reader tests"
EMU = "terminal-emulation script (index id 42560666605)"
SHM = "SHM sh_transport_operation.c + crc.c"
CRC = "CRC catalogue CRC-32/ISO-HDLC"
REF = "cards.md §1.3/§2.2 sources"


@dataclass(frozen=True)
class Vector:
    """One published answer: which structure, the bytes, and what the source says they hold."""

    source: str
    structure: str
    hex: str
    expected: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def raw(self) -> bytes:
        return bytes.fromhex(self.hex.replace(" ", ""))


def _t(*parts: int) -> dt.datetime:
    return dt.datetime(*parts)  # type: ignore[arg-type]


VECTORS: tuple[Vector, ...] = (
    # --- 0x18 transaction records -------------------------------------------------------------
    Vector(
        FLP,
        "0x18",
        "042d000000000001f40930008900034020241229141740",
        {
            "atc": 0x042D,
            "amount": 500,
            "transaction_type": 9,
            "terminal_id": "300089000340",
            "time": _t(2024, 12, 29, 14, 17, 40),
        },
    ),
    Vector(
        NFSEE,
        "0x18",
        "0002000000000003e805000000000024201708301256379000",
        {
            "atc": 2,
            "amount": 1000,
            "transaction_type": 5,
            "terminal_id": "000000000024",
            "time": _t(2017, 8, 30, 12, 56, 37),
        },
    ),
    Vector(
        NFSEE,
        "0x18",
        "0001000000000005dc05300040000570201708301223179000",
        {
            "atc": 1,
            "amount": 1500,
            "transaction_type": 5,
            "terminal_id": "300040000570",
            "time": _t(2017, 8, 30, 12, 23, 17),
        },
    ),
    Vector(
        NFSEE,
        "0x18",
        "000100000000004e2001000000000020201708301219179000",
        {
            "atc": 1,
            "amount": 20000,
            "transaction_type": 1,
            "terminal_id": "000000000020",
            "time": _t(2017, 8, 30, 12, 19, 17),
        },
    ),
    Vector(
        NFSEE,
        "0x18",
        "00080000000000001E09000000011735202108201754449000",
        {
            "atc": 8,
            "amount": 30,
            "transaction_type": 9,
            "terminal_id": "000000011735",
            "time": _t(2021, 8, 20, 17, 54, 44),
        },
        "Macau card",
    ),
    Vector(
        NFSEE,
        "0x18",
        "00070000000000001E09000000011410202108112045509000",
        {
            "atc": 7,
            "amount": 30,
            "transaction_type": 9,
            "terminal_id": "000000011410",
            "time": _t(2021, 8, 11, 20, 45, 50),
        },
        "Macau card",
    ),
    Vector(
        NFSEE,
        "0x18",
        "00060000000000002809000000011597202108102036309000",
        {
            "atc": 6,
            "amount": 40,
            "transaction_type": 9,
            "terminal_id": "000000011597",
            "time": _t(2021, 8, 10, 20, 36, 30),
        },
        "Macau card",
    ),
    Vector(
        TUR,
        "0x18",
        "0001000000000000640941310177670320241027212555",
        {
            "atc": 1,
            "amount": 100,
            "transaction_type": 9,
            "terminal_id": "413101776703",
            "time": _t(2024, 10, 27, 21, 25, 55),
        },
        "YctRealCardTest epFare",
    ),
    Vector(
        TUR, "0x18", "0" * 46, {"atc": 0, "amount": 0, "transaction_type": 0, "time": None}, "YctRealCardTest empty18"
    ),
    Vector(
        TUR,
        "0x18",
        "0001000000010000010612345678901220260101120000",
        {
            "atc": 1,
            "amount": 16777217,
            "transaction_type": 6,
            "terminal_id": "123456789012",
            "time": _t(2026, 1, 1, 12, 0, 0),
        },
        "tuFullAmountsArePreserved",
    ),
    Vector(
        TUR,
        "0x18",
        "0001000000000001000612345678901220260101120000",
        {"atc": 1, "transaction_type": 6, "terminal_id": "123456789012", "time": _t(2026, 1, 1, 12, 0, 0)},
        "historicalFare fareHex (resolvedDate 20260101)",
    ),
    # --- 0x1E process records -----------------------------------------------------------------
    Vector(
        FLP,
        "0x1E",
        "0400003000890003400108001900300000000001f400000e0120241229141740100001011000ffffffff000000000000",
        {
            "transaction_type": 4,
            "terminal_id": "0000300089000340",
            "industry": 1,
            "amount": 500,
            "balance_after": 0x0E01,
            "time": _t(2024, 12, 29, 14, 17, 40),
            "city_code": "1000",
            "acquirer": "01011000FFFFFFFF",
        },
    ),
    Vector(
        TUR,
        "0x1E",
        "06000041310177670302030100007835090000006400000F6420241027212555783511355850FFFFFFFF000000000000",
        {
            "transaction_type": 6,
            "terminal_id": "0000413101776703",
            "amount": 100,
            "balance_after": 0xF64,
            "time": _t(2024, 10, 27, 21, 25, 55),
        },
        "YctRealCardTest journey (balanceAfterFen 0xF64)",
    ),
    Vector(TUR, "0x1E", "0" * 96, {"transaction_type": 0, "amount": 0, "time": None}, "YctRealCardTest empty1E"),
    Vector(
        TUR,
        "0x1E",
        "041111123456789012020001000200000000000100000003E82026010112000099000000000000000000000000000000",
        {"transaction_type": 4, "balance_after": 1000, "time": _t(2026, 1, 1, 12, 0, 0)},
        "sharedEpEcJourneyCopies (balanceAfterFen 1000)",
    ),
    Vector(
        TUR,
        "0x1E",
        "041111123456789012020001000200000000000100000003E82026010212000099000000000000000000000000000000",
        {"transaction_type": 4, "balance_after": 1000, "time": _t(2026, 1, 2, 12, 0, 0)},
        "historicalFareNeverBorrows journey",
    ),
    Vector(
        TUR,
        "0x1E",
        "04" + "00" * 16 + "00010001" + "00" * 4 + "20260101120000" + "00" * 16,
        {"transaction_type": 4, "amount": 65537, "time": _t(2026, 1, 1, 12, 0, 0)},
        "tuFullAmountsArePreserved: data[0]=4, 00010001 at 17, time at 25",
    ),
    # --- 0x15 public information ---------------------------------------------------------------
    Vector(
        TUR,
        "0x15",
        "02205810FFFFFFFF02010310487039534635882720240715204012150000",
        {
            "issuer_id": "02205810FFFFFFFF",
            "application_version": 1,
            "start_date": dt.date(2024, 7, 15),
            "expiry_date": dt.date(2040, 12, 15),
        },
        "YctRealCardTest epInfo",
    ),
    Vector(
        TUR,
        "0x15",
        "00010001FFFFFFFF0201" + "00" * 10 + "2025010120351231" + "0000",
        {"issuer_id": "00010001FFFFFFFF", "start_date": dt.date(2025, 1, 1), "expiry_date": dt.date(2035, 12, 31)},
        "tuManagementFileIsNotConfused info",
    ),
    Vector(
        NFSEE,
        "0x15",
        "01011000FFFFFFFF02010310517007010479138120190718204012310000",
        {
            "card_serial_hex": "03105170070104791381",
            "start_date": dt.date(2019, 7, 18),
            "expiry_date": dt.date(2040, 12, 31),
        },
        "TU FCI 9F0C, card number = bytes 10-19 less leading zeros",
    ),
    Vector(
        NFSEE,
        "0x15",
        "0000000100000000010100010102030405060708201701012027123100009000",
        {
            "card_serial_hex": "00010102030405060708",
            "start_date": dt.date(2017, 1, 1),
            "expiry_date": dt.date(2027, 12, 31),
        },
        "City Union 0x15",
    ),
    # --- 0x17 management information -----------------------------------------------------------
    Vector(
        TUR,
        "0x17",
        "0000015658005840000102" + "00" * 49,
        {
            "international_code": "00000156",
            "province_code": "5800",
            "city_code": "5840",
            "interoperable": True,
            "card_kind": 2,
        },
        "tuManagementFileIsNotConfused management",
    ),
    Vector(
        NFSEE,
        "0x17-prefix",
        "00000156580058400001019000",
        {"province_code": "5800", "city_code": "5840", "card_kind": 1},
        "READ BINARY 97 Le 0B: 11 bytes",
    ),
    # --- GET BALANCE -------------------------------------------------------------------------------
    Vector(FLP, "balance", "00000AC39000", {"amount": 2755}),
    Vector(NFSEE, "balance", "8000164e9000", {"amount": 0x164E}, "read.js: % 0x80000000"),
    Vector(TUR, "balance", "00000F00", {"amount": 3840}, "EpBalanceTest plainBalance"),
    Vector(TUR, "balance", "800006E0", {"amount": 1760}, "EpBalanceTest sztFlaggedBalance"),
    # --- FCI (SELECT answers) -------------------------------------------------------------------
    Vector(
        NFSEE,
        "fci",
        "6F318408A000000632010105A5259F0801029F0C1E01011000FFFFFFFF020103105170070104791381201907182040123100009000",
        {
            "df_name": "A000000632010105",
            "app_version": "02",
            "issuer_data_length": 30,
            "card_number": "3105170070104791381",
            "city_code": "1000",
        },
        "T-Union EP",
    ),
    Vector(
        NFSEE,
        "fci",
        "6F2E8409A00000000386980701A5219F0C1E0000000100000000010100010102030405060708201701012027123100009000",
        {"df_name": "A00000000386980701", "issuer_data_length": 30},
        "City Union",
    ),
    Vector(
        NFSEE,
        "fci",
        "6F348409A00000000386980701A5279F0801999F0C2000014000201412032099123100000000000000000000000000000000000000009000",
        {"df_name": "A00000000386980701", "app_version": "99", "issuer_data_length": 32},
        "Chongqing",
    ),
    Vector(
        NFSEE,
        "fci",
        "6f328409a00000000386980701a5259f0801019f0c1e62640022333300010301000000000000100011aa201301012015123155669000",
        {"df_name": "A00000000386980701", "app_version": "01", "issuer_data_length": 30},
        "Tsinghua campus",
    ),
    Vector(
        NFSEE,
        "fci",
        "6f3284075041592e535a54a5279f0801029f0c200000000000000000fd21000051800000a344c2132017031420270314101000009000",
        {"df_name": "5041592E535A54", "app_version": "02", "issuer_data_length": 32},
        "Shenzhen Tong PAY.SZT",
    ),
    Vector(
        NFSEE,
        "fci",
        "6F42840AB0C4C3C5CDA8C7AEB0FCA5349F0801029F0C2D000108530000000001010000417FC592F4208933202107122041071285000000000000603205133300000000009000",
        {"df_name": "B0C4C3C5CDA8C7AEB0FC", "app_version": "02", "issuer_data_length": 45},
        "Macau",
    ),
    Vector(
        NFSEE,
        "fci",
        "6F36840E325041592E5359532E4444463031A524BF0C21611F4F08A000000333010103501050424F432051554153494352454449548701019000",
        {"df_name": "325041592E5359532E4444463031", "directory": [("A000000333010103", "PBOC QUASICREDIT", 1)]},
        "UnionPay PPSE",
    ),
    Vector(
        NFSEE,
        "fci",
        "6F30840E325041592E5359532E4444463031A51EBF0C1B61194F07A0000000031010500B56495341204352454449548701019000",
        {"df_name": "325041592E5359532E4444463031", "directory": [("A0000000031010", "VISA CREDIT", 1)]},
        "VISA PPSE",
    ),
    Vector(
        NFSEE,
        "fci",
        "6F2F840E325041592E5359532E4444463031A51DBF0C1A61184F07A0000000041010500A4D4153544552434152448701019000",
        {"df_name": "325041592E5359532E4444463031", "directory": [("A0000000041010", "MASTERCARD", 1)]},
        "MasterCard PPSE",
    ),
    Vector(
        NFSEE,
        "fci",
        "6F498408A000000333010103A53D501050424F432051554153494352454449548701019F38189F66049F02069F03069F1A0295055F2A029A039C019F37045F2D027A68BF0C059F4D020B0A9000",
        {"df_name": "A000000333010103", "label": "PBOC QUASICREDIT", "priority": 1},
        "UnionPay ADF",
    ),
    Vector(
        NFSEE,
        "fci",
        "6F488407A0000000031010A53D500B56495341204352454449548701019F38189F66049F02069F03069F1A0295055F2A029A039C019F37045F2D04656E7A68BF0C089F5A0540015601569000",
        {"df_name": "A0000000031010", "label": "VISA CREDIT", "priority": 1},
        "VISA ADF",
    ),
    Vector(
        NFSEE,
        "fci",
        "6F338407A0000000041010A528500A4D4153544552434152448701015F2D04656E7A68BF0C0F9F6E07015600003030009F4D020B0A9000",
        {"df_name": "A0000000041010", "label": "MASTERCARD", "priority": 1},
        "MasterCard ADF",
    ),
    Vector(
        TUR,
        "fci",
        "6F708408A000000632010106A564500A4D4F545F545F434153488701019F381EDF60019F66049F02069F03069F1A0295055F2A029A039C019F21039F3704BF0C31DF6101829F4D020B0ADF4D020C0ADF112002205810FFFFFFFF013104870395346358827F01010000015658005810000100",
        {"df_name": "A000000632010106", "label": "MOT_T_CASH", "priority": 1},
        "YctRealCardTest ecSelect",
    ),
    Vector(
        REF,
        "fci",
        "6F2E8409A00000000386980701A5219F0C1E847531000000000000003100310000002091508720151010206510100000",
        {"df_name": "A00000000386980701", "issuer_data_length": 30},
        "cnblogs City Union worked example",
    ),
    # --- EF05 records (SSSE) ----------------------------------------------------------------------
    Vector(
        REF,
        "ef05",
        "0110330300D15600000599110145FFFFFFFF",
        {"tag": 0x01, "value": "330300D15600000599110145FFFFFFFF", "region_code": "330300"},
        "card identification code, Evolis code comment",
    ),
    Vector(
        REF,
        "ef05",
        "0304332E3030",
        {"tag": 0x03, "value": "3.00", "generation": 3},
        "spec version, Evolis code comment 0304 332E3030",
    ),
    # --- 0x1A CAPP records -------------------------------------------------------------------------
    Vector(
        EMU,
        "0x1A",
        "27127D0101" + "00" * 97 + "1901023B7227" + "00" * 20,
        {
            "record_id": 0x2712,
            "record_number": 0x12,
            "record_length": 0x7D,
            "un_flag": 1,
            "locked": 1,
            "shanghai_crc": "absent",
        },
        "written with 80 DC 12 D0 80: P1 = byte 1",
    ),
    # cards.md §2.3 (correction): real records of other cities begin 27 01 7D (rail) and 27 02 7D
    # (bus); JT/T 1356.2-2020's terminal test configures record ID 2703. Only the header is
    # stated: the rest of each record is left 00 here and asserted nothing about.
    Vector(
        REF,
        "0x1A",
        "27017D" + "00" * 125,
        {"record_id": 0x2701, "record_number": 1, "record_length": 125, "industry": "rail", "shanghai_crc": "absent"},
        "rail header",
    ),
    Vector(
        REF,
        "0x1A",
        "27027D" + "00" * 125,
        {"record_id": 0x2702, "record_number": 2, "record_length": 125, "industry": "bus", "shanghai_crc": "absent"},
        "bus header",
    ),
    Vector(
        REF,
        "0x1A",
        "27037D" + "00" * 125,
        {"record_id": 0x2703, "record_number": 3, "record_length": 125, "industry": "water", "shanghai_crc": "absent"},
        "JT/T 1356.2 test record ID 2703",
    ),
    Vector(
        SHM,
        "0x1A-shanghai-entry",
        "27017D0000" + "00",
        {
            "record_id": 0x2701,
            "status": 0x01,
            "entry_city": "2900",
            "entry_sign": 0x41,
            "entry_exit_status": 0x55,
            "shanghai_crc": "valid",
        },
        "rail record as the gate's entry writes it; bytes 6.. filled by the test from SHM's constants",
    ),
    Vector(CRC, "crc32", "313233343536373839", {"crc32": 0xCBF43926}, "check value over ASCII 123456789"),
    # --- APDU data seen on the wire (same emulation frame) ------------------------------------------
    Vector(
        EMU,
        "init-request",
        "01000000010409000100 01",
        {"key_index": 1, "amount": 1, "terminal_id": "040900010001"},
        "805003020B01 00000001 040900010001 0F",
    ),
    Vector(
        EMU,
        "debit-request",
        "000000012024082118584 4B2568CE5",
        {"terminal_sequence": 1, "time": _t(2024, 8, 21, 18, 58, 44), "mac1": "B2568CE5"},
        "805401000F ... 08",
    ),
)
