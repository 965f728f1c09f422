"""Reader settings: TOML in, validated models out, readers built from them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from reader.backends.base import ReaderKind
from reader.backends.pcsc import contactless_reader, sam_reader
from reader.backends.settings import PcscSettings, ReaderSettings, load_reader_settings


def test_defaults_never_pair_with_the_virtual_readers() -> None:
    """A terminal with vpcd installed must not take a virtual PSAM unless told to."""
    pcsc = ReaderSettings().pcsc
    assert pcsc.role_of("Virtual PCD 00 00") is None
    assert pcsc.role_of("Virtual PCD 00 01") is None


def test_loading_the_configuration_loads_no_hardware_library() -> None:
    """`sscard check-config` on a machine without pcsc-lite or nfcpy must work."""
    code = "import sys, reader.config; print(sorted(m for m in ('smartcard', 'nfc', 'serial') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize(
    ("reader", "role"),
    [
        ("ACS ACR1281 1S Dual Reader PICC 00 00", "contactless"),
        ("ACS ACR1281 1S Dual Reader SAM 00 00", "sam"),
        ("HID Global OMNIKEY 5422 Smartcard Reader 01 00", None),
        ("Identiv uTrust 3700 F Contactless Reader 00 00", "contactless"),
        ("ACS ACR122U PICC Interface 00 00", "contactless"),
    ],
)
def test_default_patterns_on_real_reader_names(reader: str, role: str | None) -> None:
    assert PcscSettings().role_of(reader) == role


def test_the_sam_slot_is_never_taken_for_the_contactless_slot() -> None:
    settings = PcscSettings(contactless="dual reader", sam="SAM")
    tap = contactless_reader(settings)
    assert tap.kind is ReaderKind.CONTACTLESS
    assert tap.matches("ACS ACR1281 1S Dual Reader PICC 00 00")
    assert not tap.matches("ACS ACR1281 1S Dual Reader SAM 00 00")
    sam = sam_reader(settings)
    assert sam is not None and sam.kind is ReaderKind.SAM
    assert sam.matches("ACS ACR1281 1S Dual Reader SAM 00 00")
    tap.close()
    sam.close()


def test_no_sam_configured() -> None:
    assert sam_reader(PcscSettings(sam=None)) is None


def test_load_reads_the_readers_table(tmp_path: Path) -> None:
    path = tmp_path / "terminal.toml"
    path.write_text(
        "[uplink]\nbroker = 'ignored here'\n"
        "[readers.pcsc]\ncontactless = 'OMNIKEY 5022'\nsam = ''\ntransmit_timeout = 0.8\n"
        "[readers.nfc]\npath = 'tty:USB0:pn532'\n"
        "[readers.serial]\nrelay = '/dev/serial/by-id/usb-relay'\n"
    )
    settings = load_reader_settings(path)
    assert settings.pcsc.contactless == "OMNIKEY 5022"
    assert settings.pcsc.transmit_timeout == 0.8
    assert settings.nfc.path == "tty:USB0:pn532"
    assert settings.serial.relay is not None and settings.serial.relay.device == "/dev/serial/by-id/usb-relay"
    assert settings.serial.relay.channel == 1
    assert settings.serial.display is None


def test_a_file_without_readers_table_is_the_table(tmp_path: Path) -> None:
    path = tmp_path / "readers.toml"
    path.write_text("[pcsc]\nenabled = false\n")
    assert load_reader_settings(path).pcsc.enabled is False


@pytest.mark.parametrize(
    "text",
    ["[pcsc]\ncontactless = '['\n", "[pcsc]\ntransmit_timeout = 0\n", "[pcsc]\nunknown = 1\n", "[nfcc]\n"],
)
def test_invalid_settings_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValidationError):
        load_reader_settings(path)


def test_an_empty_sam_pattern_means_no_sam() -> None:
    settings = PcscSettings(sam="")
    assert settings.sam is None
    assert settings.role_of("Virtual PCD 00 01") is None
