"""Canteen and venue terminals on the vpcd bench: their configuration, a top-up, a hotlist entry.

The shipped examples (config/canteen.toml, config/venue.toml) are moved onto the bench like
`bench.terminal_config` does for the others, with the kind's section replaced by what the
test states, so every rule a test judges is written in the test itself.
"""

from __future__ import annotations

import json
import secrets
import tomllib
from pathlib import Path
from typing import Any

import httpx

from reader.config import Config, parse_config, read_secret
from reader.daemon.record import card_token
from reader.uplink.hotlist import encode_hotlist
from sscard_sim.card import VirtualCard
from tests.daemon.bench import CONFIG_DIR, SLOT_CARD, SLOT_PSAM, Terminal, free_loopback_port


def kind_config(kind: str, workdir: Path, section: dict[str, Any], *, api: bool = False) -> Config:
    """The example of `kind` on the bench, its `[kind]` section replaced by `section`."""
    return parse_config(kind_document(kind, workdir, section, api=api), f"{kind}.toml on the bench")


def kind_document(kind: str, workdir: Path, section: dict[str, Any], *, api: bool = False) -> dict[str, Any]:
    """The TOML document of `kind_config`, to write to a file for a reload."""
    raw: dict[str, Any] = tomllib.loads((CONFIG_DIR / f"{kind}.toml").read_text(encoding="utf-8"))
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "token.key"
    if not key.exists():
        key.write_text(secrets.token_hex(32))
    raw["terminal"]["state_dir"] = str(workdir)
    raw["terminal"]["token_key"] = f"file:{key}"
    raw["readers"] = {"pcsc": {"contactless": SLOT_CARD, "sam": SLOT_PSAM}}
    raw.pop("uplink", None)
    raw.pop("hotlist", None)
    raw.pop("api", None)
    raw[kind] = section
    if api:
        token = workdir / "api.token"
        token.write_text(secrets.token_urlsafe(24))
        raw["api"] = {"listen": f"127.0.0.1:{free_loopback_port()}", "token": f"file:{token}"}
    return raw


def toml_text(document: dict[str, Any], prefix: str = "") -> str:
    """`document` as TOML: tables of strings, numbers, booleans, lists of those and arrays of tables."""
    lines: list[str] = []
    tables: list[str] = []
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            tables.append(f"\n[{name}]\n" + toml_text(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            tables += [f"\n[[{name}]]\n" + toml_text(item, f"{name}.") for item in value]
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n" + "".join(tables)


def api_client(config: Config) -> httpx.Client:
    """A client of the terminal's local API with its bearer token."""
    assert config.api is not None
    token = read_secret(config.api.token).decode()
    return httpx.Client(
        base_url=f"http://{config.api.listen}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def token_of(config: Config, card: VirtualCard) -> str:
    """The card's token as the terminal computes it (HMAC of the card number, deployment key)."""
    return card_token(read_secret(config.terminal.token_key), card.profile.ssse.card_number)


def hotlist(terminal: Terminal, *tokens: str) -> None:
    """Put the cards on the terminal's hotlist, as a list from the back office would."""
    assert terminal.daemon is not None and terminal.daemon.services is not None
    terminal.daemon.services.hotlist.install(encode_hotlist(1, [bytes.fromhex(token) for token in tokens]))


def top_up(card: VirtualCard, balance: int) -> VirtualCard:
    """The card's purse holding `balance` fen, as after a recharge at a service point."""
    card.store.commit(card.memory.with_changes(balance=balance))
    return card
