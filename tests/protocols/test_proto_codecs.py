"""Shared field codecs: padding rules of cn, an and GBK, BCD dates."""

from __future__ import annotations

import datetime as dt

import pytest

from protocols import codecs
from protocols.codecs import FieldError


def test_cn_strips_f_padding_and_rebuilds_it() -> None:
    assert codecs.decode_cn(bytes.fromhex("510100FF")) == "510100"
    assert codecs.encode_cn("510100", 4) == bytes.fromhex("510100FF")
    assert codecs.decode_cn(bytes.fromhex("12345F")) == "12345"
    with pytest.raises(FieldError):
        codecs.decode_cn(bytes.fromhex("1F23"))
    with pytest.raises(FieldError):
        codecs.decode_cn(bytes.fromhex("1A"))


def test_an_and_gbk_zero_padding() -> None:
    assert codecs.decode_an(b"3.00") == "3.00"
    assert codecs.decode_an(b"AB\x00\x00") == "AB"
    assert codecs.encode_an("AB", 4) == b"AB\x00\x00"
    with pytest.raises(FieldError):
        codecs.decode_an(b"A\x00B")
    with pytest.raises(FieldError):
        codecs.decode_an(b"\xc9\xe7")
    name = "社会保障".encode("gbk")
    assert name == bytes.fromhex("C9E7BBE1B1A3D5CF")
    assert codecs.decode_gbk(name + bytes(4)) == "社会保障"
    with pytest.raises(FieldError):
        codecs.decode_gbk(b"\xc9")
    with pytest.raises(FieldError):
        codecs.encode_gbk("社会保障", 7)


def test_bcd_dates() -> None:
    assert codecs.decode_date(bytes.fromhex("20241229")) == dt.date(2024, 12, 29)
    assert codecs.decode_date(bytes(4)) is None
    assert codecs.encode_date(None) == bytes(4)
    with pytest.raises(FieldError):
        codecs.decode_date(bytes.fromhex("20241329"))
    moment = dt.datetime(2024, 12, 29, 14, 17, 40)
    assert codecs.encode_datetime(moment) == bytes.fromhex("20241229141740")
    assert codecs.decode_datetime(bytes.fromhex("20241229141740")) == moment
