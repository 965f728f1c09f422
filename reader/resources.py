"""The files sscard ships besides its code: example configurations and systemd files.

They live at the top of the checkout (config/, systemd/) where operators and reviewers look
for them, and the wheel carries them as the data packages `reader.examples.config` and
`reader.examples.systemd` (pyproject.toml maps the folders). An installed terminal has no
checkout, so every command that needs one of these files asks this module, never a path
relative to the source tree.

An editable install (`pip install -e .`) has no such packages to import: setuptools cannot
map a folder without `__init__.py` into a package in development mode. There the files are
read where they are, in the checkout this module belongs to.
"""

from __future__ import annotations

import importlib.resources
from importlib.resources.abc import Traversable
from pathlib import Path

CONFIG_PACKAGE = "reader.examples.config"
SYSTEMD_PACKAGE = "reader.examples.systemd"
EXAMPLE_KINDS = ("bus", "library", "pharmacy", "canteen", "venue", "demo")
UNIT_NAME = "sscard.service"
_CHECKOUT = Path(__file__).resolve().parents[1]
_CHECKOUT_FOLDERS = {CONFIG_PACKAGE: "config", SYSTEMD_PACKAGE: "systemd"}


class ResourceMissing(Exception):
    """A shipped file is not where the installation should have put it (a broken install)."""


def _folder(package: str) -> Traversable:
    """The installed data package, or the checkout's folder in a development install."""
    try:
        return importlib.resources.files(package)
    except ModuleNotFoundError:
        folder = _CHECKOUT / _CHECKOUT_FOLDERS[package]
        if not folder.is_dir():
            raise ResourceMissing(
                f"neither the package {package} nor the folder {folder} is there: reinstall sscard-terminal"
            ) from None
        return folder


def _file(package: str, name: str) -> Traversable:
    entry = _folder(package) / name
    if not entry.is_file():
        raise ResourceMissing(f"{name} is missing from {package}: reinstall sscard-terminal")
    return entry


def example_config(kind: str) -> str:
    """The text of the example configuration of one terminal kind (bus, library, pharmacy, demo)."""
    if kind not in EXAMPLE_KINDS:
        raise ValueError(f"no example configuration {kind!r}; there are {', '.join(EXAMPLE_KINDS)}")
    return _file(CONFIG_PACKAGE, f"{kind}.toml").read_text(encoding="utf-8")


def example_config_path(kind: str) -> Path:
    """The example as a file on disk, for commands that take a configuration path (the demo).

    A wheel is always unpacked into site-packages, so the data package is a real folder.
    """
    entry = _file(CONFIG_PACKAGE, f"{kind}.toml")
    if not isinstance(entry, Path):
        raise ResourceMissing(f"{kind}.toml is not a file on disk ({entry}): install sscard-terminal unzipped")
    return entry


def systemd_files() -> list[str]:
    """The names of the shipped systemd files: the unit first, then udev and modprobe files."""
    names = sorted(entry.name for entry in _folder(SYSTEMD_PACKAGE).iterdir() if _is_shipped(entry))
    return sorted(names, key=lambda name: name != UNIT_NAME)


def _is_shipped(entry: Traversable) -> bool:
    return entry.is_file() and entry.name.endswith((".service", ".rules", ".conf"))


def systemd_file(name: str = UNIT_NAME) -> str:
    """The text of one shipped systemd file (the service unit by default)."""
    if name not in systemd_files():
        raise ValueError(f"no systemd file {name!r}; there are {', '.join(systemd_files())}")
    return _file(SYSTEMD_PACKAGE, name).read_text(encoding="utf-8")
