"""Reading T-Union and e-cash over stored dumps; images, masking and dump files."""

from __future__ import annotations

import json

import pytest

from protocols import tunion as tu
from protocols.ecash import TAG_BALANCE, build_amount, get_data, parse_amount, read_ecash
from protocols.fci import DirectoryEntry, Fci
from protocols.image import CardImage, Dump, Recorder, ReplayMiss, read_card, replay, to_json, to_jsonable
from protocols.ppse import PPSE_NAME
from protocols.tunion_read import read_tunion
from tests.protocols.proto_dumps import CARD_ID, PUBLIC_15, TUNION_FCI, dump, ef05_after_auth, ef05_before_auth, ef06

RECORD_18 = "042d000000000001f40930008900034020241229141740"
RECORD_1E = "0400003000890003400108001900300000000001f400000e0120241229141740100001011000ffffffff000000000000"
PPSE = (
    Fci.create(
        PPSE_NAME,
        directory=(
            DirectoryEntry.create(bytes.fromhex("A000000632010105"), "MOT_T_EP", 1),
            DirectoryEntry.create(bytes.fromhex("A000000333010101"), "UnionPay", 2),
        ),
    )
    .to_bytes()
    .hex()
)
HOLDER = tu.HOLDER_INFO_LAYOUT.build(tu.HolderInfo(0, 0, "李四", "510101198001011234", 1)).hex()


def tunion_pairs() -> list[tuple[str, str]]:
    return [
        ("00A404000E325041592E5359532E444446303100", PPSE + "9000"),
        ("00A4040008A00000063201010500", TUNION_FCI + "9000"),
        ("00B097003C", "0000015600002900000101" + "00" * 49 + "9000"),
        ("00B0960037", HOLDER + "9000"),
        ("805C000204", "00000AC39000"),
        ("00B201C417", RECORD_18 + "9000"),
        ("00B202C417", "6A83"),
        ("00B201F430", RECORD_1E + "9000"),
        ("00B202F430", "6A83"),
    ]


def ecash_pairs() -> list[tuple[str, str]]:
    return [
        ("00A4040008A00000033301010100", "6F0A8408A0000003330101019000"),
        ("80CA9F7900", "9F79060000000123459000"),
        ("80CA9F7800", "9F78060000001000009000"),
        ("80CA9F7700", "9F77060000001000009000"),
        ("80CA9F6D00", "6A88"),
        ("80CA9F5D00", "9F5D060000000123459000"),
    ]


def test_read_tunion_via_ppse() -> None:
    image = read_tunion(replay(dump(*tunion_pairs())))
    assert image is not None
    assert image.aid == tu.AID_TUNION_EP
    assert image.public.card_number == "1040000123456789012"
    assert image.balance == 2755
    assert image.management is not None and image.management.interoperable
    assert image.holder is not None and image.holder.holder_name == "李四"
    assert [r.amount for r in image.transactions] == [500]
    assert [r.balance_after for r in image.process_records] == [0x0E01]


def test_read_tunion_absent() -> None:
    card = replay(dump(("00A404000E325041592E5359532E444446303100", "6A82"), ("00A4040008A00000063201010500", "6A82")))
    assert read_tunion(card) is None


def test_ecash_by_get_data_never_gpo() -> None:
    card = Recorder(replay(dump(("00A404000E325041592E5359532E444446303100", PPSE + "9000"), *ecash_pairs())))
    image = read_ecash(card)
    assert image is not None
    assert image.balance == 12345 and image.single_transaction_limit == 100000
    assert image.reset_threshold is None and image.offline_available == 12345
    assert all(e.command[1] != 0xA8 for e in card.dump().exchanges)


def test_get_data_amount_round_trip() -> None:
    assert get_data(TAG_BALANCE).to_bytes().hex().upper() == "80CA9F7900"
    raw = build_amount(TAG_BALANCE, 2755)
    assert raw.hex().upper() == "9F7906000000002755"
    assert parse_amount(raw) == (TAG_BALANCE, 2755)


def full_card_pairs() -> list[tuple[str, str]]:
    return [*ef05_before_auth("2.00"), *ef05_after_auth(), *ef06(), *tunion_pairs(), *ecash_pairs()]


def test_card_image_json_masks_personal_fields() -> None:
    image = read_card(replay(dump(*full_card_pairs())))
    assert isinstance(image, CardImage)
    masked = to_jsonable(image)
    text = json.dumps(masked, ensure_ascii=False)
    for secret in ("张三", "李四", "11010119900101123X", "510101198001011234", "A12345678", "1990-01-01", "110101"):
        assert secret not in text
    assert set(masked["personal"]) >= {
        "ssse.card_number",
        "ssse.social_security_number",
        "ssse.name",
        "ssse.name_extension",
        "ssse.birthplace",
        "ssse.birth_date",
        "tunion.holder.holder_name",
        "tunion.holder.holder_id",
    }
    assert masked["data"]["ssse"]["card_identification_code"] == CARD_ID
    revealed = json.loads(to_json(image, reveal=True))
    assert revealed["data"]["ssse"]["name"] == "张三"
    assert revealed["data"]["tunion"]["holder"]["holder_id"] == "510101198001011234"


def test_dump_round_trip_and_offline_replay() -> None:
    recorder = Recorder(replay(dump(*full_card_pairs())), atr=bytes.fromhex("3B8F8001"))
    live = read_card(recorder, atr=bytes.fromhex("3B8F8001"))
    stored = Dump.from_json(recorder.dump().to_json())
    assert stored == recorder.dump()
    assert read_card(replay(stored), atr=stored.atr) == live


def test_replay_reports_missing_commands() -> None:
    with pytest.raises(ReplayMiss) as info:
        replay(dump())(bytes.fromhex("00A4040008A00000063201010500"))
    assert info.value.structure == "dump"


def test_public_info_from_fci_saves_a_read() -> None:
    pairs = [p for p in tunion_pairs() if not p[0].startswith("00B095")]
    assert read_tunion(replay(dump(*pairs))) is not None
    assert tu.PUBLIC_INFO_LAYOUT.parse(bytes.fromhex(PUBLIC_15)).city_code == "2900"
