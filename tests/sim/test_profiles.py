"""Profiles and key files: how integrators describe their own cards, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from sscard_sim.card import VirtualCard
from sscard_sim.keys import KeyFileError, load_master_keys
from sscard_sim.profile import PROFILE_DIR, ProfileError, load_card_profile, load_psam_profile, resolve_profile


def test_a_profile_elsewhere_can_inherit_a_bundled_one(tmp_path: Path) -> None:
    mine = tmp_path / "mine.toml"
    mine.write_text('[card]\nbase = "sichuan"\ndescription = "mine"\n\n[tunion]\nbalance = 777\n')
    profile = load_card_profile(mine)
    assert profile.name == "mine" and profile.description == "mine"
    assert profile.tunion is not None and profile.tunion.balance == 777
    assert profile.ssse.name == "测试甲"
    assert VirtualCard(profile).memory.balance == 777


def test_bundled_names_and_paths_resolve(tmp_path: Path) -> None:
    assert resolve_profile("sichuan") == PROFILE_DIR / "sichuan.toml"
    assert resolve_profile(str(PROFILE_DIR / "chongqing.toml")) == PROFILE_DIR / "chongqing.toml"
    with pytest.raises(ProfileError, match="no profile"):
        resolve_profile("atlantis")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('[ssse]\ncard_id = "5101"\n', "card_id"),
        ('[tunion]\nbalance = "lots"\n', "balance"),
        ('[tunion]\napplication_serial = "12"\n', "application_serial"),
        ('[tunion]\nkey_versions = { "1" = 9 }\n', "key version 9"),
        ('[card]\nbase = "sichuan"\nkeys = "nowhere.toml"\n', "nowhere"),
    ],
)
def test_a_broken_profile_names_what_is_wrong(tmp_path: Path, override: str, message: str) -> None:
    broken = tmp_path / "broken.toml"
    text = override if override.startswith("[card]") else '[card]\nbase = "sichuan"\n\n' + override
    broken.write_text(text)
    with pytest.raises(ProfileError, match=message):
        load_card_profile(broken)


def test_a_profile_cannot_inherit_from_itself(tmp_path: Path) -> None:
    loop = tmp_path / "loop.toml"
    loop.write_text('[card]\nbase = "loop.toml"\n')
    with pytest.raises(ProfileError, match="itself"):
        load_card_profile(loop)


def test_key_files_are_checked(tmp_path: Path) -> None:
    keys = load_master_keys(PROFILE_DIR / "demo-keys.toml")
    assert sorted(keys.purchase) == [1] and keys.purchase[1].algorithm == 0x04
    short = tmp_path / "short-keys.toml"
    short.write_text('[tunion.1]\nalgorithm = 4\nmpk = "00"\nmtk = "00"\n[ssse]\nmia = "00"\nrkssse = "00"\n')
    with pytest.raises(KeyFileError, match="16"):
        load_master_keys(short)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_master_keys(tmp_path / "absent.toml")


def test_the_demo_psam_profile() -> None:
    psam = load_psam_profile("demo-psam")
    assert psam.terminal_id == bytes.fromhex("510100000001")
    assert psam.purchase_df == bytes.fromhex("8011")
    assert psam.masters.purchase_key(1) is not None
