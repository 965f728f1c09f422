"""What the display says for each kind of accepted tap: a paid fare, a free ride, a holder tap.

A free ride must read as free to the rider: "扣款 0.00" (a debit of 0.00) looks like a charge.
"""

from __future__ import annotations

from reader.daemon.feedback import signal_for
from reader.daemon.policy import Decision, Fare, Outcome, Reason


def _ride(amount: int, band: str | None) -> Decision:
    return Decision(Outcome.ACCEPTED, Reason.OK, Fare(amount=amount, base=200, transfer=False, band=band))


def test_a_paid_fare_shows_the_debit_and_the_balance_left() -> None:
    signal = signal_for(_ride(200, None), balance_after=4800)
    assert signal.lines == ("扣款 2.00", "余额 48.00")
    assert (signal.beep, signal.open_gate) == ("ok", True)


def test_a_reduced_fare_names_its_band() -> None:
    assert signal_for(_ride(100, "senior"), balance_after=1905).lines == ("扣款 1.00 senior", "余额 19.05")


def test_a_free_ride_says_free_and_never_shows_a_debit() -> None:
    signal = signal_for(_ride(0, "elder"))
    assert signal.lines == ("免费乘车 elder", "")
    assert not any("扣款" in line or "0.00" in line for line in signal.lines)
    assert (signal.beep, signal.open_gate) == ("ok", True)


def test_a_free_ride_with_a_known_balance_shows_it() -> None:
    assert signal_for(_ride(0, "elder"), balance_after=3000).lines == ("免费乘车 elder", "余额 30.00")


def test_a_holder_tap_without_a_fare_welcomes() -> None:
    assert signal_for(Decision(Outcome.ACCEPTED, Reason.OK)).lines == ("欢迎 Welcome", "")


def test_a_refusal_keeps_its_text_and_beep() -> None:
    signal = signal_for(Decision(Outcome.DENIED, Reason.INSUFFICIENT_BALANCE))
    assert (signal.lines, signal.beep, signal.open_gate) == (("余额不足 Low balance", ""), "denied", False)
    assert signal_for(Decision(Outcome.DENIED, Reason.ALREADY_PAID)).beep == "warning"
