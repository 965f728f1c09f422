"""Field marks on image records: which values are personal data.

A record field declared with `field(metadata=PERSONAL)` carries a mark that every output
path reads (`protocols.image.to_jsonable`), so masking is decided by the record definition
and cannot be forgotten by one caller.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

PERSONAL_KEY = "personal"
PERSONAL: Mapping[str, bool] = MappingProxyType({PERSONAL_KEY: True})
"""Metadata of a dataclass field holding personal data (name, ID number, card number, birth data)."""


def is_personal(field: dataclasses.Field[Any]) -> bool:
    return bool(field.metadata.get(PERSONAL_KEY, False))
