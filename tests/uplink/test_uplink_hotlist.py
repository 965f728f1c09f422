"""The hotlist: signed full lists and deltas, refusals that keep the old list, lookups, the file swap, sync."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from pathlib import Path

import paho.mqtt.client as mqtt
import paho.mqtt.publish as mqtt_publish
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import ValidationError

from reader.uplink.errors import (
    HotlistFetchError,
    HotlistFormatError,
    HotlistSignatureError,
    HotlistVersionError,
    UplinkConfigError,
)
from reader.uplink.hotlist import (
    BLOCK_ENTRIES,
    ENTRY_SIZE,
    HEADER_SIZE,
    Hotlist,
    HotlistStore,
    encode_delta,
    encode_full,
    encode_hotlist,
    encode_list_file,
    token_digest,
)
from reader.uplink.hotlist_sync import HttpHotlistSync, MqttHotlistSync
from reader.uplink.settings import BackoffSettings, HotlistSettings, MqttUplinkSettings
from tests.support.backoffice import BackOfficeServer
from tests.support.mosquitto import MosquittoBroker
from tests.support.waiting import wait_until
from tests.uplink.conftest import BACKOFFICE_PASSWORD, BACKOFFICE_USER, TERMINAL

# RFC 8032 section 7.1, TEST 1: the back office's key in these tests.
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_EMPTY_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
BACK_OFFICE = Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET)
INTRUDER = Ed25519PrivateKey.generate()
TOKEN_KEY = b"deployment token key"


def token(n: int) -> bytes:
    """A card token as the daemon computes it: HMAC-SHA256 of the card number."""
    return hmac.new(TOKEN_KEY, f"A{n:08d}".encode(), hashlib.sha256).digest()


LISTED = [token(n) for n in range(200)]
NOT_LISTED = [token(n) for n in range(1000, 1200)]
ENTRIES = [token_digest(t) for t in LISTED]


def full(version: int, tokens: list[bytes], key: Ed25519PrivateKey = BACK_OFFICE) -> bytes:
    return encode_full(version, (token_digest(t) for t in tokens), key)


def signed(header: bytes, body: bytes, key: Ed25519PrivateKey = BACK_OFFICE) -> bytes:
    """A document with any header, properly signed: only the terminal's own checks can catch it."""
    return header + body + key.sign(header + body)


def wire_header(kind: int, version: int, base: int, count: int, adds: int, removes: int) -> bytes:
    return struct.pack(">4sBBBBQQIII", b"SSHL", 2, kind, 16, 0, version, base, count, adds, removes)


@pytest.fixture
def store(tmp_path: Path) -> HotlistStore:
    store = HotlistStore(tmp_path / "state" / "hotlist.bin")
    store.receive(full(10, LISTED[:100]), BACK_OFFICE.public_key())
    return store


def assert_unchanged(store: HotlistStore, file_bytes: bytes) -> None:
    """The list in force and its file are exactly as before the refused document."""
    assert store.version == "10" and len(store.current) == 100
    assert store.path.read_bytes() == file_bytes
    assert HotlistStore(store.path).version == "10"
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["hotlist.bin"]


# --------------------------------------------------------------------------- lookups


def test_the_test_key_is_rfc8032_test_1() -> None:
    raw = BACK_OFFICE.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert raw == RFC8032_PUBLIC
    assert BACK_OFFICE.sign(b"") == RFC8032_EMPTY_SIGNATURE


def test_lookup_finds_listed_tokens_only_including_the_ends(store: HotlistStore) -> None:
    hotlist = store.current
    ordered = sorted(token_digest(t) for t in LISTED[:100])
    assert all(store.is_listed(t) for t in LISTED[:100])
    assert not any(store.is_listed(t) for t in LISTED[100:] + NOT_LISTED)
    assert hotlist.contains_digest(ordered[0]) and hotlist.contains_digest(ordered[-1])
    below, above = bytes(ENTRY_SIZE), b"\xff" * ENTRY_SIZE
    assert not hotlist.contains_digest(below) and not hotlist.contains_digest(above)
    # Neighbours of the ends and of a block boundary differ in the last bit only.
    for entry in (ordered[0], ordered[-1], ordered[BLOCK_ENTRIES - 1], ordered[BLOCK_ENTRIES]):
        nudged = entry[:-1] + bytes([entry[-1] ^ 1])
        assert hotlist.contains_digest(nudged) == (nudged in ordered)


def test_lookups_at_every_block_boundary() -> None:
    entries = sorted(os.urandom(ENTRY_SIZE) for _ in range(5 * BLOCK_ENTRIES + 3))
    hotlist = Hotlist.parse(encode_list_file(1, entries))
    for i in range(0, len(entries), BLOCK_ENTRIES):
        for j in (i - 1, i, i + 1):
            if 0 <= j < len(entries):
                assert hotlist.contains_digest(entries[j])
    # An entry that matches only across two neighbouring entries is not a hit.
    assert not hotlist.contains_digest(entries[0][8:] + entries[1][:8])


def test_entries_sharing_their_top_half_across_a_block_boundary_are_found() -> None:
    top = b"\x42" * 8
    same = [top + bytes([0, 0, 0, 0, 0, 0, 0, n]) for n in range(3)]
    entries = sorted([bytes([0x10]) + bytes(14) + bytes([n]) for n in range(BLOCK_ENTRIES - 2)] + same)
    assert entries.index(same[2]) == BLOCK_ENTRIES  # the third one opens the second block
    hotlist = Hotlist.parse(encode_list_file(1, entries))
    assert all(hotlist.contains_digest(e) for e in same)
    assert not hotlist.contains_digest(top + bytes([0, 0, 0, 0, 0, 0, 0, 9]))


def test_empty_and_absent_lists_deny_nothing(tmp_path: Path) -> None:
    store = HotlistStore(tmp_path / "hotlist.bin")
    assert store.version is None and not store.is_listed(LISTED[0])
    store.receive(full(1, []), BACK_OFFICE.public_key())
    assert store.version == "1" and len(store.current) == 0 and not store.is_listed(LISTED[0])


def test_a_token_must_be_32_bytes(store: HotlistStore) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        store.is_listed(LISTED[0][:16])


def test_two_hundred_thousand_entries(tmp_path: Path) -> None:
    entries = [os.urandom(ENTRY_SIZE) for _ in range(200_000)]
    store = HotlistStore(tmp_path / "hotlist.bin")
    store.receive(encode_full(1, entries, BACK_OFFICE), BACK_OFFICE.public_key())
    reopened = HotlistStore(tmp_path / "hotlist.bin")
    assert len(reopened.current) == 200_000
    size = (tmp_path / "hotlist.bin").stat().st_size
    assert size == HEADER_SIZE + 200_000 * 16 + 8 * -(-200_000 // BLOCK_ENTRIES)
    assert all(reopened.current.contains_digest(e) for e in entries[::97])
    assert sum(reopened.current.contains_digest(os.urandom(ENTRY_SIZE)) for _ in range(20_000)) == 0
    reopened.current.verify()


# --------------------------------------------------------------------------- refused whole


def test_a_list_signed_by_another_key_is_refused(store: HotlistStore) -> None:
    before = store.path.read_bytes()
    with pytest.raises(HotlistSignatureError):
        store.receive(full(11, LISTED, key=INTRUDER), BACK_OFFICE.public_key())
    assert_unchanged(store, before)


def test_a_list_altered_after_signing_is_refused(store: HotlistStore) -> None:
    before = store.path.read_bytes()
    document = bytearray(full(11, LISTED))
    document[40] ^= 0x01  # one bit of the first entry
    with pytest.raises(HotlistSignatureError):
        store.receive(bytes(document), BACK_OFFICE.public_key())
    assert_unchanged(store, before)


def test_a_signed_document_without_a_configured_key_is_refused(store: HotlistStore) -> None:
    before = store.path.read_bytes()
    with pytest.raises(HotlistSignatureError, match="no public key"):
        store.install(full(11, LISTED))
    assert_unchanged(store, before)
    keyed = HotlistStore(store.path, public_key=BACK_OFFICE.public_key())
    assert keyed.install(full(11, LISTED)).version == "11"


@pytest.mark.parametrize("count", [199, 201, 0])
def test_a_list_whose_count_does_not_check_out_is_refused(store: HotlistStore, count: int) -> None:
    before = store.path.read_bytes()
    body = b"".join(sorted(ENTRIES))
    with pytest.raises(HotlistFormatError, match="count"):
        store.receive(signed(wire_header(1, 11, 0, count, 200, 0), body), BACK_OFFICE.public_key())
    assert_unchanged(store, before)


def test_a_truncated_list_is_refused(store: HotlistStore) -> None:
    before = store.path.read_bytes()
    document = full(11, LISTED)
    for cut in (document[:-1], document[:-64 - 16] + document[-64:], document[:30]):
        with pytest.raises(HotlistFormatError):
            store.receive(cut, BACK_OFFICE.public_key())
    assert_unchanged(store, before)


@pytest.mark.parametrize(("version", "stale"), [(9, True), (10, False), (0, False)])
def test_a_list_whose_version_does_not_check_out_is_refused(store: HotlistStore, version: int, stale: bool) -> None:
    """Older than the list in force (a replay), the same version with other entries, or version 0."""
    before = store.path.read_bytes()
    with pytest.raises(HotlistVersionError) as caught:
        store.receive(full(version, LISTED), BACK_OFFICE.public_key())
    assert caught.value.stale is stale
    assert_unchanged(store, before)


def test_the_list_in_force_delivered_again_changes_nothing(store: HotlistStore) -> None:
    before = store.path.read_bytes()
    assert store.receive(full(10, LISTED[:100]), BACK_OFFICE.public_key(), etag='"x"') is store.current
    assert store.path.read_bytes() == before and store.etag == '"x"'


def test_an_unsorted_list_is_refused(store: HotlistStore) -> None:
    before = store.path.read_bytes()
    ordered = sorted(ENTRIES)
    for body in (
        b"".join([*ordered[:50], ordered[51], ordered[50], *ordered[52:]]),
        b"".join([*ordered[:50], ordered[50], *ordered[50:199]]),  # a duplicate
        b"".join([ordered[0][:8] + b"\xff" * 8, ordered[0][:8] + bytes(8), *ordered[1:199]]),  # tie on the top half
    ):
        with pytest.raises(HotlistFormatError, match="ascending"):
            store.receive(signed(wire_header(1, 11, 0, 200, 200, 0), body), BACK_OFFICE.public_key())
    assert_unchanged(store, before)


# --------------------------------------------------------------------------- deltas


def test_a_good_delta_is_applied_and_survives_a_restart(store: HotlistStore) -> None:
    held = store.current
    adds = [token_digest(t) for t in LISTED[100:110]]
    removes = [token_digest(t) for t in LISTED[:5]] + [min(token_digest(t) for t in LISTED[:100])]
    removes = list(dict.fromkeys(removes))
    delta = encode_delta(10, 11, adds=adds, removes=removes, count=100 + 10 - len(removes), key=BACK_OFFICE)
    store.receive(delta, BACK_OFFICE.public_key())
    assert store.version == "11" and len(store.current) == 100 + 10 - len(removes)
    assert all(store.is_listed(t) for t in LISTED[5:110] if token_digest(t) not in removes)
    assert not any(store.current.contains_digest(r) for r in removes)
    assert held.version == "10" and held.contains_digest(removes[0])  # a held version never changes
    reopened = HotlistStore(store.path)
    assert reopened.version == "11" and reopened.is_listed(LISTED[105])
    reopened.current.verify()
    assert list(reopened.current) == sorted(set(ENTRIES[:100]) - set(removes) | set(adds))


def test_a_delta_on_another_base_is_refused(store: HotlistStore) -> None:
    before = store.path.read_bytes()
    for base in (9, 11):
        delta = encode_delta(base, 12, adds=ENTRIES[100:101], removes=[], count=101, key=BACK_OFFICE)
        with pytest.raises(HotlistVersionError, match=f"applies to {base}"):
            store.receive(delta, BACK_OFFICE.public_key())
    assert_unchanged(store, before)


def test_a_delta_needs_a_list_in_force(tmp_path: Path) -> None:
    store = HotlistStore(tmp_path / "hotlist.bin")
    delta = encode_delta(10, 11, adds=ENTRIES[:1], removes=[], count=1, key=BACK_OFFICE)
    with pytest.raises(HotlistVersionError):
        store.receive(delta, BACK_OFFICE.public_key())
    assert store.version is None and not (tmp_path / "hotlist.bin").exists()


@pytest.mark.parametrize(
    ("adds", "removes", "count", "message"),
    [
        (ENTRIES[100:102], [], 101, "count"),  # declares one entry too few
        ([], ENTRIES[150:151], 99, "not listed"),  # removes what is not listed
        (ENTRIES[0:1], [], 101, "already listed"),  # adds what is listed
    ],
)
def test_a_delta_that_does_not_check_out_is_refused(
    store: HotlistStore, adds: list[bytes], removes: list[bytes], count: int, message: str
) -> None:
    before = store.path.read_bytes()
    delta = encode_delta(10, 11, adds=adds, removes=removes, count=count, key=BACK_OFFICE)
    with pytest.raises(HotlistFormatError, match=message):
        store.receive(delta, BACK_OFFICE.public_key())
    assert_unchanged(store, before)


def test_a_delta_signed_by_another_key_is_refused(store: HotlistStore) -> None:
    before = store.path.read_bytes()
    delta = encode_delta(10, 11, adds=ENTRIES[100:101], removes=[], count=101, key=INTRUDER)
    with pytest.raises(HotlistSignatureError):
        store.receive(delta, BACK_OFFICE.public_key())
    assert_unchanged(store, before)


def test_a_delta_already_applied_is_stale(store: HotlistStore) -> None:
    delta = encode_delta(10, 11, adds=ENTRIES[100:101], removes=[], count=101, key=BACK_OFFICE)
    store.receive(delta, BACK_OFFICE.public_key())
    with pytest.raises(HotlistVersionError) as caught:
        store.receive(delta, BACK_OFFICE.public_key())
    assert caught.value.stale and store.version == "11"


# --------------------------------------------------------------------------- the file on disk


def test_start_up_maps_the_file_and_reads_only_its_header(store: HotlistStore) -> None:
    """A flipped entry byte is not seen at start-up (no O(n) pass), only by verify()."""
    data = bytearray(store.path.read_bytes())
    data[HEADER_SIZE + 3] ^= 0x80
    store.path.write_bytes(bytes(data))
    reopened = HotlistStore(store.path)
    assert reopened.version == "10"
    with pytest.raises(HotlistFormatError, match="checksum"):
        reopened.current.verify()


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:-1],  # size does not match the count
        lambda b: b"XXXX" + b[4:],
        lambda b: b[:5] + b"\x20" + b[6:],  # entry size 32
        lambda b: b"",
    ],
)
def test_an_unusable_file_means_no_list_until_the_next_download(store: HotlistStore, mangle: object) -> None:
    assert callable(mangle)
    broken = mangle(store.path.read_bytes())
    store.path.write_bytes(broken)
    reopened = HotlistStore(store.path)
    assert reopened.version is None and not reopened.is_listed(LISTED[0])
    assert store.path.read_bytes() == broken  # kept for inspection
    reopened.receive(full(12, LISTED), BACK_OFFICE.public_key())
    assert HotlistStore(store.path).version == "12"


def test_a_list_file_put_in_place_is_installed_on_reload(store: HotlistStore) -> None:
    """SIGHUP hands install() the bytes at `path`: the terminal's own format, checked in full."""
    image = encode_hotlist(3, LISTED[150:])
    assert store.install(image).version == "3" and store.is_listed(LISTED[160])
    assert store.install(store.path.read_bytes()) is store.current  # the same file again: nothing to do
    tampered = bytearray(image)
    tampered[HEADER_SIZE] ^= 1
    with pytest.raises(HotlistFormatError, match="checksum"):
        store.install(bytes(tampered))
    bad_index = bytearray(image)
    bad_index[-1] ^= 1
    with pytest.raises(HotlistFormatError, match="index"):
        store.install(bytes(bad_index))
    assert store.version == "3"


def test_a_leftover_temporary_file_is_ignored_then_removed(store: HotlistStore) -> None:
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    leftover = store.path.with_name(f".hotlist.bin.{dead}.tmp")
    leftover.write_bytes(full(99, LISTED)[:1000])  # what a crash mid-write leaves behind
    reopened = HotlistStore(store.path)
    assert reopened.version == "10" and len(reopened.current) == 100
    reopened.receive(full(11, LISTED), BACK_OFFICE.public_key())
    assert not leftover.exists()
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["hotlist.bin"]


# --------------------------------------------------------------------------- settings


def test_the_public_key_is_hex_or_base64_and_required_with_a_source() -> None:
    as_hex = HotlistSettings(source="mqtt", public_key=RFC8032_PUBLIC.hex())
    as_b64 = HotlistSettings(source="mqtt", public_key=base64.b64encode(RFC8032_PUBLIC).decode())
    assert as_hex.public_key_bytes() == as_b64.public_key_bytes() == RFC8032_PUBLIC
    assert HotlistSettings().public_key_bytes() is None
    for values in (
        {"source": "mqtt"},
        {"source": "http", "http_url": "https://bo.example/hotlist"},
        {"public_key": RFC8032_PUBLIC[:31].hex()},
        {"public_key": "not a key"},
    ):
        with pytest.raises(ValidationError):
            HotlistSettings.model_validate(values)


def test_a_sync_without_a_key_does_not_start(tmp_path: Path) -> None:
    settings = HotlistSettings.model_construct(source="http", http_url="http://127.0.0.1:9/h", public_key=None)
    with pytest.raises(UplinkConfigError, match="public_key"):
        HttpHotlistSync(HotlistStore(tmp_path / "hotlist.bin"), settings)


# --------------------------------------------------------------------------- HTTP


def _http_settings(url: str, **extra: object) -> HotlistSettings:
    values = {"source": "http", "http_url": url, "public_key": RFC8032_PUBLIC.hex(), **extra}
    return HotlistSettings.model_validate(values)


def test_http_sync_takes_full_lists_and_deltas(tmp_path: Path, backoffice: BackOfficeServer) -> None:
    store = HotlistStore(tmp_path / "hotlist.bin")
    sync = HttpHotlistSync(store, _http_settings(backoffice.hotlist_url))
    with pytest.raises(HotlistFetchError, match="404"):
        sync.fetch_once()
    backoffice.set_hotlist(full(1, LISTED[:10]), '"etag-1"')
    assert sync.fetch_once() is True
    assert store.version == "1" and store.etag == '"etag-1"'
    assert sync.fetch_once() is False  # 304 Not Modified
    assert backoffice.hotlist_requests == 3

    backoffice.set_hotlist(full(2, LISTED, key=INTRUDER), '"etag-bad"')
    with pytest.raises(HotlistSignatureError):
        sync.fetch_once()
    backoffice.set_hotlist(b"not a hotlist", '"etag-junk"')
    with pytest.raises(HotlistFormatError):
        sync.fetch_once()
    assert store.version == "1" and not store.is_listed(LISTED[50])

    delta = encode_delta(1, 2, adds=ENTRIES[10:60], removes=ENTRIES[:2], count=58, key=BACK_OFFICE)
    backoffice.set_hotlist(delta, '"etag-2"')
    assert sync.fetch_once() is True
    assert store.version == "2" and store.is_listed(LISTED[50]) and not store.is_listed(LISTED[0])

    wrong_base = encode_delta(7, 8, adds=ENTRIES[60:61], removes=[], count=59, key=BACK_OFFICE)
    backoffice.set_hotlist(wrong_base, '"etag-8"')
    with pytest.raises(HotlistVersionError):
        sync.fetch_once()
    assert store.version == "2"
    backoffice.set_hotlist(full(9, LISTED), '"etag-9"')
    assert sync.fetch_once() is True
    assert store.version == "9" and store.is_listed(LISTED[199])
    # A restarted terminal sends the stored ETag and gets a 304.
    again = HttpHotlistSync(HotlistStore(tmp_path / "hotlist.bin"), _http_settings(backoffice.hotlist_url))
    assert again.fetch_once() is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hotlist.bin", "hotlist.bin.etag"]


def test_http_sync_refuses_a_download_beyond_max_bytes(tmp_path: Path, backoffice: BackOfficeServer) -> None:
    store = HotlistStore(tmp_path / "hotlist.bin")
    backoffice.set_hotlist(full(1, LISTED), '"1"')
    sync = HttpHotlistSync(store, _http_settings(backoffice.hotlist_url, max_bytes=1024))
    with pytest.raises(HotlistFetchError, match="larger than"):
        sync.fetch_once()
    assert store.version is None


def test_http_sync_worker_polls(tmp_path: Path, backoffice: BackOfficeServer) -> None:
    store = HotlistStore(tmp_path / "hotlist.bin")
    backoffice.set_hotlist(full(1, LISTED), '"1"')
    settings = _http_settings(backoffice.hotlist_url, poll_interval_s=0.1, backoff=BackoffSettings(initial_s=0.05))
    sync = HttpHotlistSync(store, settings)
    sync.start()
    try:
        assert wait_until(lambda: store.version == "1", 10)
        backoffice.set_hotlist(encode_delta(1, 2, adds=[], removes=ENTRIES[:1], count=199, key=BACK_OFFICE), '"2"')
        assert wait_until(lambda: store.version == "2", 10)
        assert not store.is_listed(LISTED[0]) and sync.is_alive()
    finally:
        sync.stop()
    assert not sync.is_alive()


# --------------------------------------------------------------------------- MQTT


def test_mqtt_sync_takes_the_retained_list_and_the_deltas(
    tmp_path: Path, broker: MosquittoBroker, password_file: Path
) -> None:
    topic = f"hotlist/{TERMINAL}"
    auth: mqtt_publish.AuthParameter = {"username": BACKOFFICE_USER, "password": BACKOFFICE_PASSWORD}

    def publish(payload: bytes, *, delta: bool = False) -> None:
        mqtt_publish.single(
            topic + ("/delta" if delta else ""),
            payload,
            qos=1,
            retain=not delta,
            hostname=broker.host,
            port=broker.port,
            auth=auth,
            protocol=mqtt.MQTTv5,
        )

    publish(full(1, LISTED[:20]))  # published before the terminal connects: retained
    store = HotlistStore(tmp_path / "hotlist.bin")
    broker_settings = MqttUplinkSettings(
        host=broker.host,
        port=broker.port,
        tls=None,
        username=TERMINAL,
        password_file=password_file,
        reconnect=BackoffSettings(initial_s=0.1, max_s=0.5),
    )
    settings = HotlistSettings(source="mqtt", mqtt_topic="hotlist/{terminal_id}", public_key=RFC8032_PUBLIC.hex())

    def started() -> MqttHotlistSync:
        sync = MqttHotlistSync(store, settings, broker_settings, terminal_id=TERMINAL)
        sync.start()
        assert wait_until(lambda: sync.stats().connected, 10)
        return sync

    sync = started()
    try:
        assert wait_until(lambda: store.version == "1", 10)
        assert store.is_listed(LISTED[0]) and not store.is_listed(LISTED[50])
        publish(full(2, LISTED, key=INTRUDER))
        assert wait_until(lambda: sync.stats().failures >= 1, 10)
        publish(encode_delta(5, 6, adds=ENTRIES[99:100], removes=[], count=99, key=BACK_OFFICE)[:-1], delta=True)
        assert wait_until(lambda: sync.stats().failures >= 2, 10)
        assert store.version == "1" and not store.is_listed(LISTED[50])

        publish(encode_delta(1, 2, adds=ENTRIES[20:60], removes=ENTRIES[:1], count=59, key=BACK_OFFICE), delta=True)
        assert wait_until(lambda: store.version == "2", 10)
        assert store.is_listed(LISTED[50]) and not store.is_listed(LISTED[0])
        # A delta ahead of the list in force waits for the list it applies to.
        publish(encode_delta(3, 4, adds=ENTRIES[100:101], removes=[], count=101, key=BACK_OFFICE), delta=True)
        publish(full(3, LISTED[:100]))
        assert wait_until(lambda: store.version == "4", 10)
        assert store.is_listed(LISTED[100]) and len(store.current) == 101
        failures = sync.stats().failures
        assert sync.is_alive()
    finally:
        sync.stop()

    # Restarted: the retained list (3) is older than the list in force (4) and is ignored, not a fault.
    sync = started()
    try:
        assert wait_until(lambda: sync.stats().connected, 10)
        publish(encode_delta(4, 5, adds=[], removes=ENTRIES[100:101], count=100, key=BACK_OFFICE), delta=True)
        assert wait_until(lambda: store.version == "5", 10)
        assert sync.stats().failures == 0 and failures == 2
    finally:
        sync.stop()
    assert HotlistStore(tmp_path / "hotlist.bin").version == "5"
