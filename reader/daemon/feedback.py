"""What the person at the reader sees and hears, and whether the gate opens.

The messages are decided here once for every terminal kind; the devices (display, buzzer,
relay) are optional and slow (serial round trips), so they are driven from a worker thread
of their own and never hold up the next tap. A device that fails is logged, and the tap
stays recorded: feedback comes after the record, never instead of it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from reader.daemon.fares import Fare
from reader.daemon.policy import Decision, Reason
from reader.log import get_logger
from reader.peripherals.display import LineDisplay
from reader.peripherals.errors import PeripheralError
from reader.peripherals.relay import GateRelay

log = get_logger(component="feedback")

_DENIED_TEXT: dict[Reason, str] = {
    Reason.ALREADY_PAID: "已付款 Already paid",
    Reason.NO_TRANSPORT_APP: "无交通应用 No transit app",
    Reason.APP_LOCKED: "卡已锁定 Card locked",
    Reason.APP_BLOCKED: "应用停用 App blocked",
    Reason.NOT_YET_VALID: "未启用 Not yet valid",
    Reason.EXPIRED: "卡已过期 Card expired",
    Reason.HOTLISTED: "请联系客服 See staff",
    Reason.REGION_NOT_ACCEPTED: "本地不受理 Not accepted",
    Reason.INSUFFICIENT_BALANCE: "余额不足 Low balance",
    Reason.NOT_A_SOCIAL_SECURITY_CARD: "非社保卡 Card not accepted",
    Reason.CARD_NOT_GENUINE: "请联系客服 See staff",
    Reason.CARD_READ_FAILED: "请重新刷卡 Tap again",
    Reason.CARD_REMOVED: "请重新刷卡 Tap again",
    Reason.PURCHASE_FAILED: "请重新刷卡 Tap again",
    Reason.MAC2_INVALID: "请联系客服 See staff",
    Reason.OUT_OF_SERVICE: "暂停服务 Out of service",
    Reason.PSAM_UNAVAILABLE: "暂停服务 Out of service",
    Reason.PSAM_CANNOT_AUTHENTICATE: "请联系客服 See staff",
    Reason.NO_MEAL_PRICE: "请先点餐 Order first",
    Reason.NOT_RESERVED: "未预约 No reservation",
    Reason.RESERVATION_SLOT_MISSED: "非预约时段 Not your time slot",
    Reason.VENUE_FULL: "今日已满 Full today",
    Reason.ALREADY_ENTERED: "今日已入场 Entered today",
}

_MEAL_REASONS = (Reason.MEAL_CHARGED, Reason.MEAL_PAY_AT_POS, Reason.MEAL_DISCOUNT_USED)
_VENUE_REASONS = (Reason.VENUE_ENTRY, Reason.VENUE_ENTRY_RESERVED)


def yuan(fen: int) -> str:
    """Fen as yuan with two decimals; below zero while a purse uses its overdraft (-150 → -1.50)."""
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


@dataclass(frozen=True)
class Signal:
    """One result as shown: display rows, a beep pattern name, and the gate."""

    lines: tuple[str, ...]
    beep: str
    open_gate: bool = False


def signal_for(decision: Decision, balance_after: int | None = None) -> Signal:
    """The signal for a decision; an accepted fare shows what was paid and what is left.

    A free ride (a concession band at 0 %) debits nothing, so it says so: "免费乘车" (free
    ride) with the band, never "扣款 0.00", which reads as a charge to the rider watching.
    """
    if decision.accepted:
        fare = decision.fare
        if fare is None:
            return Signal(("欢迎 Welcome", ""), "ok", open_gate=True)
        if decision.reason in _MEAL_REASONS:
            return _meal_signal(decision.reason, fare, balance_after)
        if decision.reason in _VENUE_REASONS:
            return _venue_signal(fare)
        band = f" {fare.band}" if fare.band else ""
        first = f"免费乘车{band}" if fare.amount == 0 else f"扣款 {yuan(fare.amount)}{band}"
        second = f"余额 {yuan(balance_after)}" if balance_after is not None else ""
        return Signal((first, second), "ok", open_gate=True)
    beep = "warning" if decision.reason in (Reason.ALREADY_PAID, Reason.CARD_REMOVED) else "denied"
    return Signal((_DENIED_TEXT.get(decision.reason, decision.reason.value), ""), beep)


def _meal_signal(reason: Reason, fare: Fare, balance_after: int | None) -> Signal:
    """A canteen meal: the price to pay (or that was debited) and the band that set it.

    Charged to the purse it reads "扣款" (debited) with the balance left; handed to the POS it
    reads "请付" (please pay), since nothing was taken yet; a free meal says free. A meal past
    the card's discounted meals of the period says so instead of a band, so an elderly
    diner paying full price knows why.
    """
    band = " 优惠已用" if reason is Reason.MEAL_DISCOUNT_USED else (f" {fare.band}" if fare.band else "")
    if fare.amount == 0:
        first = f"免费用餐{band}"
    elif reason is Reason.MEAL_PAY_AT_POS or (reason is Reason.MEAL_DISCOUNT_USED and balance_after is None):
        first = f"请付 {yuan(fare.amount)}{band}"
    else:
        first = f"扣款 {yuan(fare.amount)}{band}"
    second = f"余额 {yuan(balance_after)}" if balance_after is not None else ""
    return Signal((first, second), "ok")


def _venue_signal(fare: Fare) -> Signal:
    """A venue entry: welcome, and the entry price of the holder's band (free when it is 0)."""
    band = f" {fare.band}" if fare.band else ""
    second = f"免费入场{band}" if fare.amount == 0 else f"票价 {yuan(fare.amount)}{band}"
    return Signal(("欢迎 Welcome", second), "ok", open_gate=True)


class Feedback:
    """Drives the display, buzzer and relay from one worker thread; the newest signal wins."""

    def __init__(
        self,
        display: LineDisplay | None = None,
        relay: GateRelay | None = None,
        gate_seconds: float = 3.0,
        echo: Callable[[Signal], None] | None = None,
    ) -> None:
        self.display = display
        self.relay = relay
        self.gate_seconds = gate_seconds
        self.echo = echo
        self._signals: queue.Queue[Signal | None] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name="feedback", daemon=True)

    def start(self) -> None:
        for device in (self.display, self.relay):
            if device is not None:
                device.connect()
        self._thread.start()

    def give(self, signal: Signal) -> None:
        """Queue a signal without blocking; an old one still waiting is dropped."""
        while True:
            try:
                self._signals.put_nowait(signal)
                return
            except queue.Full:
                try:
                    self._signals.get_nowait()
                except queue.Empty:
                    continue

    def stop(self) -> None:
        self.give_none()
        self._thread.join(5)
        for device in (self.display, self.relay):
            if device is not None:
                device.close()

    def give_none(self) -> None:
        self._signals.put(None)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while (signal := self._signals.get()) is not None:
            if self.echo is not None:
                self.echo(signal)
            try:
                if signal.open_gate and self.relay is not None:
                    self.relay.open(self.gate_seconds)
                if self.display is not None:
                    self.display.show(signal.lines)
                    self.display.beep(signal.beep)
            except PeripheralError as error:
                log.warning("feedback_device_failed", error=str(error))
