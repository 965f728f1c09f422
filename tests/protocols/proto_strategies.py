"""Hypothesis strategies: valid encodings of every structure, and their mutations.

Valid encodings come from building random typed values, so they exercise the builders as
much as the parsers; mutations (flipped, cut, extended, re-tagged, inserted, deleted bytes)
are what real cards and noisy links produce.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import construct as c
from hypothesis import strategies as st

from protocols import ssse
from protocols.codecs import _Codec
from protocols.layout import Layout

GBK_CHARS = st.sampled_from("张三李四王五赵六社会保障卡郑钱孙周吴ABCxyz 0123·")


def _digits(n: int, exact: bool) -> st.SearchStrategy[str]:
    size = st.just(n) if exact else st.integers(0, n)
    return size.flatmap(lambda k: st.text("0123456789", min_size=k, max_size=k))


def text_fitting(alphabet: st.SearchStrategy[str], encoding: str, size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet, max_size=size).filter(lambda t: len(t.encode(encoding)) <= size)


def field_strategy(subcon: Any) -> st.SearchStrategy[Any]:
    """Values a field of this construct can carry."""
    if isinstance(subcon, _Codec):
        n = subcon.length
        if subcon.kind == "bcd":
            return _digits(2 * n, exact=True)
        if subcon.kind == "cn":
            return _digits(2 * n, exact=False)
        if subcon.kind == "date":
            return st.none() | st.dates(dt.date(1000, 1, 1), dt.date(9999, 12, 31))
        if subcon.kind == "datetime":
            return st.none() | st.datetimes(dt.datetime(1000, 1, 1), dt.datetime(9999, 12, 31)).map(
                lambda d: d.replace(microsecond=0)
            )
        if subcon.kind == "an":
            return text_fitting(st.characters(min_codepoint=0x20, max_codepoint=0x7E), "ascii", n)
        if subcon.kind == "gbk":
            return text_fitting(GBK_CHARS, "gbk", n)
        raise AssertionError(subcon.kind)
    size = int(subcon.sizeof())
    if isinstance(subcon, c.Bytes):
        return st.binary(min_size=size, max_size=size)
    return st.integers(0, 2 ** (8 * size) - 1)


def valid_layout(layout: Layout[Any]) -> st.SearchStrategy[bytes]:
    fields = [field_strategy(sub) for _, sub in layout.fields]
    return st.tuples(*fields).map(lambda values: layout.build(layout.record(*values)))


def valid_item(ef: bytes) -> st.SearchStrategy[bytes]:
    specs = [spec for spec in ssse.ITEMS.values() if spec.ef == ef]

    def value_for(spec: ssse.ItemSpec) -> st.SearchStrategy[Any]:
        if spec.encoding is ssse.Encoding.BINARY:
            return st.binary(min_size=spec.length, max_size=spec.length)
        if spec.encoding is ssse.Encoding.DATE:
            return st.none() | st.dates(dt.date(1000, 1, 1), dt.date(9999, 12, 31))
        if spec.encoding is ssse.Encoding.CN:
            return _digits(2 * spec.length, exact=False)
        if spec.encoding is ssse.Encoding.AN:
            return text_fitting(st.characters(min_codepoint=0x20, max_codepoint=0x7E), "ascii", spec.length)
        return text_fitting(GBK_CHARS, "gbk", spec.length)

    return st.sampled_from(specs).flatmap(
        lambda spec: value_for(spec).map(lambda v: ssse.build_item_record(ssse.item(spec.name, v)))
    )


def mutate(raw: bytes, kind: int, position: int, noise: bytes) -> bytes:
    """One mutation of a valid encoding; kind 0 leaves it valid."""
    size = len(raw)
    at = position % (size + 1)
    if kind == 1 and size:
        index = position % size
        return raw[:index] + bytes((raw[index] ^ (noise[0] or 0x01),)) + raw[index + 1 :]
    if kind == 2:
        return raw[:at]
    if kind == 3:
        return raw + noise
    if kind == 4 and size:
        return bytes((noise[0],)) + raw[1:]
    if kind == 5:
        return raw[:at] + noise + raw[at:]
    if kind == 6 and size:
        index = position % size
        return raw[:index] + raw[index + 1 :]
    if kind == 7:
        return noise
    return raw


def mutations(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.builds(mutate, valid, st.integers(0, 7), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=6))


def mutate_batch(raw: bytes, seed: int, count: int) -> list[bytes]:
    """`raw` itself and `count - 1` mutations of it, all determined by `seed`.

    Drawing one seed per Hypothesis example and mutating in-process keeps the engine's
    per-example cost off the hot path: the default run checks 10,000 inputs per parser in
    seconds, and a failure still replays and shrinks through the seed and the valid value.
    """
    rng = random.Random(seed)
    out = [raw]
    for _ in range(count - 1):
        noise = rng.randbytes(rng.randint(1, 6))
        out.append(mutate(raw, rng.randrange(1, 8), rng.randrange(1 << 16), noise))
    return out
