"""The bus validator: read the e-purse and the holder's age band, decide the fare, charge it.

The card's bytes go down into `protocols` in three conversations: `read_purse` (SELECT, file
0x15, both balances, the journey log when transfers are priced), `read_items` (the SSSE's
card number, region and birth date), and `purchase`, through the `Charger` that journals it.
A torn debit of the same card is settled between the first and the second, before anything
else is sent to the card.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from protocols.exchange import Transmit, command
from protocols.purchase import CappUpdate
from protocols.ssse_auth import PsamCannotAuthenticate, SsseAuthenticationFailed
from protocols.ssse_items import SsseItems, read_items
from protocols.status import FileNotFound
from protocols.tunion import SFI_PROCESS, ProcessRecord, PublicInfo, select_tunion
from protocols.tunion_process import build_process_record
from protocols.tunion_read import PurseState, read_purse
from reader.config import BusSettings, ConfigError
from reader.daemon.charge import CardSeen, Charger
from reader.daemon.charge import ProcessRecord as RecordBuilder
from reader.daemon.journal import CardMark
from reader.daemon.outcome import CardRef, TapContext, TapOutcome
from reader.daemon.policy import AgeBand, BusRules, BusTap, Decision, Outcome, Reason, Ride, decide_bus
from reader.daemon.recording import Recorder
from reader.daemon.services import Services
from reader.log import get_logger

INDUSTRY_BUS = 0x02
TRANSACTION_SINGLE_RIDE = 0x06
RECENT_RIDES = 3
"""Journey-log records read for the transfer rule: the newest few are the only ones in its window."""

_PURSE_PROBLEMS = {
    PurseState.ABSENT: Reason.NO_TRANSPORT_APP,
    PurseState.LOCKED: Reason.APP_LOCKED,
    PurseState.BLOCKED: Reason.APP_BLOCKED,
}

log = get_logger(component="pipeline")


class BusKind:
    """One bus validator's taps: the fare of the line, charged to the T-Union e-purse."""

    def __init__(self, services: Services, recorder: Recorder) -> None:
        self.services = services
        self.charger = Charger(services, recorder)
        _ = self.settings  # a missing [bus] section stops the daemon at start, not at the first tap

    @property
    def settings(self) -> BusSettings:
        """The [bus] section in force: SIGHUP may have replaced it since the last tap."""
        settings = self.services.config.bus
        if settings is None:
            raise ConfigError("a bus terminal needs a [bus] section")
        return settings

    def process(self, card: Transmit, tap: TapContext) -> TapOutcome:
        services = self.services
        settings = self.settings
        purse = read_purse(card, process_records=RECENT_RIDES if settings.transfer_discount else 0)
        if purse.public is not None:
            settled = self.charger.settle_torn(card, purse.public, tap, purse.balance)
            if settled is not None:
                return settled

        problem = _PURSE_PROBLEMS.get(purse.state)
        ef06 = (0x0D,) if settings.bands and problem is None else ()
        refused: PsamCannotAuthenticate | None = None
        try:
            items = read_items(card, services.psam_transmit(), (0x01, 0x07), ef06)
        except FileNotFound:
            return _denied(Reason.NOT_A_SOCIAL_SECURITY_CARD)
        except PsamCannotAuthenticate as error:
            # EF06 stays closed, so no birth date and no age band; the card is not at fault.
            refused = error
            items = SsseItems(dict(error.readable), authenticated=False)
        except SsseAuthenticationFailed as error:
            log.warning("tap_card_not_genuine", step=error.step.value)
            return _denied(Reason.CARD_NOT_GENUINE)
        card_id = items.values.get("card_identification_code")
        number = items.text("card_number")
        if not isinstance(card_id, bytes) or number is None:
            return _denied(Reason.CARD_READ_FAILED)
        ref = CardRef(services.token(number), card_id[:3].hex().upper())
        if refused is not None:
            log.warning(
                "tap_psam_cannot_authenticate",
                step=refused.step.value,
                command=refused.command,
                sw=f"{refused.sw:04X}",
                on_birth_date_unreadable=settings.on_birth_date_unreadable,
            )
            if settings.on_birth_date_unreadable == "refuse":
                return _denied(Reason.PSAM_CANNOT_AUTHENTICATE, ref)
        log.info(
            "tap_card_read",
            region=ref.region,
            authenticated=items.authenticated,
            transport=problem.value if problem else "ok",
        )
        if problem is not None or purse.public is None:
            return _denied(problem or Reason.CARD_READ_FAILED, ref)

        # The SSSE read left the SSSE selected: back to the e-purse for the debit.
        command(card, select_tunion(), "SELECT T-Union")
        journal = services.journal
        bus_tap = BusTap(
            region=ref.region,
            hotlisted=services.hotlisted(ref.token),
            start=purse.public.start_date,
            expiry=purse.public.expiry_date,
            balance=purse.balance,
            overdraft_limit=purse.allowance,
            birth_date=_date(items.values.get("birth_date")),
            rides=bus_rides(purse.process_records),
            last_paid=_local(journal.last(ref.token, CardMark.PAID), tap.now),
            last_refused=_local(journal.last(ref.token, CardMark.NOT_GENUINE), tap.now),
        )
        decision = decide_bus(bus_tap, bus_rules(settings), tap.now.replace(tzinfo=None))
        seen = CardSeen(ref, purse.balance, purse.allowance)
        if not decision.accepted or decision.fare is None:
            return seen.outcome(decision)
        if decision.fare.amount == 0:
            return seen.outcome(decision, mark=(CardMark.PAID, tap.now))
        record = self._ride_record(settings, purse.public, decision.fare.amount, tap.now)
        return self.charger.charge(card, tap, purse.public, decision, seen, record, key_index=settings.psam_key_index)

    def _ride_record(self, settings: BusSettings, public: PublicInfo, amount: int, now: dt.datetime) -> RecordBuilder:
        """The ride's 0x1E record, built once the card's balance after and the PSAM's number are known."""
        city = bytes.fromhex(settings.city_code) if settings.city_code else public.issuer_id[2:4]

        def build(balance_after: int, terminal_number: bytes) -> CappUpdate:
            record = build_process_record(
                transaction_type=TRANSACTION_SINGLE_RIDE,
                terminal_number=terminal_number,
                industry=INDUSTRY_BUS,
                line=settings.line,
                station=settings.station,
                operator_code=settings.operator_code,
                amount=amount,
                balance_after=balance_after,
                time=now.replace(tzinfo=None),
                city_code=city,
                acquirer=bytes.fromhex(settings.acquirer),
            )
            return CappUpdate(SFI_PROCESS, 0x00, record)

        return build


def bus_rules(settings: BusSettings) -> BusRules:
    """The pure fare rules of the configured line."""
    return BusRules(
        line=line_code(settings.line),
        fare=settings.fare,
        accepted_regions=tuple(settings.accepted_regions),
        passback=dt.timedelta(seconds=settings.passback_seconds),
        transfer_discount=settings.transfer_discount,
        transfer_window=dt.timedelta(minutes=settings.transfer_window_minutes),
        bands=tuple(AgeBand(b.name, b.min_age, b.percent) for b in settings.bands),
    )


def bus_rides(records: Sequence[ProcessRecord]) -> tuple[Ride, ...]:
    """The bus rides among the journey log's records (other industries earn no bus transfer)."""
    return tuple(
        Ride(record.time, record.line_station[:2].hex(), record.amount)
        for record in records
        if record.time is not None and record.industry == INDUSTRY_BUS
    )


def line_code(line: str) -> str:
    """The line as the 0x1E record stores it (2 bytes BCD), and as rides read back from it compare."""
    return line.zfill(4)[-4:]


def _denied(reason: Reason, card: CardRef | None = None) -> TapOutcome:
    return TapOutcome(Decision(Outcome.DENIED, reason), card)


def _date(value: object) -> dt.date | None:
    return value if isinstance(value, dt.date) else None


def _local(when: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
    return None if when is None else when.astimezone(now.tzinfo).replace(tzinfo=None)
