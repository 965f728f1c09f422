"""The community canteen (社区食堂): the holder's age band prices the meal, capped per meal period.

The card tells the terminal who eats: the SSSE's birth date, read with the PSAM's
authentication, gives the age band, so an elderly diner's discount is recognised without
asking. The meal's price comes from the canteen POS through the local API (a price for the
next tap, `reader.daemon.meal_price`) or, failing one, from the configuration. The discount
applies to `discounted_meals` meals per card per meal period per day, counted durably in the
queue's database (`reader.daemon.daily_counts`). Then, by configuration, the discounted price
is debited from the T-Union e-purse through the `Charger` (journal, torn-debit recovery and
every money guarantee of the bus), or handed back to the POS in the answer to its waiting
read-card request, for the POS to take the payment.

The debit's 0x1E journey-log record carries industry code 0x00, "other": the public
references name 00 other, 01 metro, 02 bus, and none a code for catering; "other" keeps
a meal from ever reading as a ride (the bus's transfer rule counts industry 0x02 only).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from protocols.exchange import Transmit, command
from protocols.purchase import CappUpdate
from protocols.ssse_auth import PsamCannotAuthenticate, SsseAuthenticationFailed
from protocols.ssse_items import SsseItems, read_items
from protocols.status import FileNotFound
from protocols.tunion import SFI_PROCESS, PublicInfo, select_tunion
from protocols.tunion_process import build_process_record
from protocols.tunion_read import PurseRead, PurseState, read_purse
from reader.config import CanteenSettings, ConfigError
from reader.daemon.canteen_policy import (
    CanteenRules,
    MealPeriod,
    MealTap,
    counts_as_discounted,
    decide_meal,
    meal_period_at,
    parse_clock,
)
from reader.daemon.charge import CardSeen, Charger
from reader.daemon.charge import ProcessRecord as RecordBuilder
from reader.daemon.daily_counts import DailyCounts
from reader.daemon.fares import AgeBand
from reader.daemon.meal_price import CanteenRequests, MealPrice, MealPrices
from reader.daemon.outcome import CardRef, TapContext, TapOutcome
from reader.daemon.policy import Decision, Outcome, Reason
from reader.daemon.recording import Recorder
from reader.daemon.services import Services
from reader.log import get_logger
from reader.uplink.errors import OutOfServiceError

INDUSTRY_OTHER = 0x00
"""The 0x1E record's industry code of a canteen meal: "other" (see the module's docstring)."""
TRANSACTION_SINGLE = 0x06
EF05_ITEMS = (0x01, 0x05, 0x06, 0x07)
"""Card identification code, issue and expiry dates, card number."""
EF06_BIRTH_DATE = (0x0D,)
MEALS_SCOPE = "meal"
"""Every meal of a card (the double-tap guard); discounted ones count in "meal:<period>" too."""

_PURSE_PROBLEMS = {
    PurseState.ABSENT: Reason.NO_TRANSPORT_APP,
    PurseState.LOCKED: Reason.APP_LOCKED,
    PurseState.BLOCKED: Reason.APP_BLOCKED,
}

log = get_logger(component="pipeline")


def period_scope(period: MealPeriod) -> str:
    """The daily-count scope of the discounted meals of one meal period."""
    return f"{MEALS_SCOPE}:{period.name}"


def canteen_rules(settings: CanteenSettings) -> CanteenRules:
    """The pure meal rules of the configured canteen."""
    return CanteenRules(
        accepted_regions=tuple(settings.accepted_regions),
        payment=settings.payment,
        bands=tuple(AgeBand(b.name, b.min_age, b.percent) for b in settings.bands),
        meals=tuple(MealPeriod(m.name, parse_clock(m.start), parse_clock(m.end)) for m in settings.meals),
        discounted_meals=settings.discounted_meals,
        repeat=dt.timedelta(seconds=settings.repeat_seconds),
    )


class CanteenKind:
    """One canteen reader's taps: the meal's price after the band discount, charged or handed to the POS."""

    def __init__(self, services: Services, recorder: Recorder) -> None:
        self.services = services
        self.recorder = recorder
        self.charger = Charger(services, recorder)
        settings = self.settings  # a missing [canteen] section stops the daemon at start
        self.counts = DailyCounts(services.queue)
        requests = services.card_requests
        if not isinstance(requests, CanteenRequests):
            # The POS sets prices and waits for cards through the local API, built after the
            # kinds: the canteen's requests carry the price board the API serves.
            requests = CanteenRequests(MealPrices(settings.pos_price_seconds))
            services.card_requests = requests
        self.prices = requests.prices
        services.events.observe(self.count)

    @property
    def settings(self) -> CanteenSettings:
        """The [canteen] section in force: SIGHUP may have replaced it since the last tap."""
        settings = self.services.config.canteen
        if settings is None:
            raise ConfigError("a canteen terminal needs a [canteen] section")
        return settings

    def process(self, card: Transmit, tap: TapContext) -> TapOutcome:
        settings = self.settings
        self.prices.longest = settings.pos_price_seconds
        purse: PurseRead | None = None
        problem: Reason | None = None
        if settings.payment == "purse":
            purse = read_purse(card, process_records=0)
            if purse.public is not None:
                settled = self.charger.settle_torn(card, purse.public, tap)
                if settled is not None:
                    return settled
            problem = _PURSE_PROBLEMS.get(purse.state)
        read = self._read_holder(card, settings, problem)
        if isinstance(read, TapOutcome):
            return read
        ref, items = read
        log.info("tap_card_read", region=ref.region, authenticated=items.authenticated)
        if problem is not None or (purse is not None and purse.public is None):
            return _denied(problem or Reason.CARD_READ_FAILED, ref)
        if purse is not None:
            # The SSSE read left the SSSE selected: back to the e-purse for the debit.
            command(card, select_tunion(), "SELECT T-Union")
        pos_price = self.prices.current()
        decision = decide_meal(self._meal_tap(ref, items, purse, pos_price, tap), canteen_rules(settings), _naive(tap))
        band = decision.fare.band if decision.fare else None
        log.info("tap_meal_priced", price_from_pos=pos_price is not None, band=band)
        if purse is None or purse.public is None:
            outcome = TapOutcome(decision, ref)
        else:
            outcome = self._charge(card, tap, settings, purse, purse.public, decision, ref)
        if not outcome.decision.accepted or outcome.torn:
            return outcome
        if pos_price is not None and not self.prices.take(pos_price):
            log.warning("tap_meal_price_replaced_meanwhile")
        return dataclasses.replace(outcome, answer=self._answer(outcome, settings))

    def _read_holder(
        self, card: Transmit, settings: CanteenSettings, problem: Reason | None
    ) -> tuple[CardRef, SsseItems] | TapOutcome:
        """The card and its SSSE items (the birth date when bands price the meal), or a refusal."""
        services = self.services
        ef06 = EF06_BIRTH_DATE if settings.bands and problem is None else ()
        refused: PsamCannotAuthenticate | None = None
        try:
            items = read_items(
                card, services.psam_transmit(), EF05_ITEMS, ef06, authenticate=settings.payment == "pos"
            )
        except FileNotFound:
            return _denied(Reason.NOT_A_SOCIAL_SECURITY_CARD)
        except PsamCannotAuthenticate as error:
            # EF06 stays closed, so no birth date and no band; the card is not at fault.
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
            if settings.on_birth_date_unreadable == "refuse" or settings.payment == "pos":
                # With no purse debit to prove the card genuine, an unauthenticated card is not served.
                return _denied(Reason.PSAM_CANNOT_AUTHENTICATE, ref)
        return ref, items

    def _meal_tap(
        self, ref: CardRef, items: SsseItems, purse: PurseRead | None, pos_price: MealPrice | None, tap: TapContext
    ) -> MealTap:
        rules = canteen_rules(self.settings)
        now = _naive(tap)
        period = meal_period_at(rules.meals, now.time())
        counts = self.counts
        public = purse.public if purse is not None else None
        return MealTap(
            region=ref.region,
            hotlisted=self.services.hotlisted(ref.token),
            issued=_date(items.values.get("issue_date")),
            expiry=_date(items.values.get("expiry_date")),
            birth_date=_date(items.values.get("birth_date")),
            price=pos_price.amount if pos_price is not None else self.settings.price,
            price_fixed=pos_price is None,
            discounted_today=counts.count(period_scope(period), now.date(), ref.token) if period else 0,
            last_meal=_local(counts.last(MEALS_SCOPE, ref.token), tap.now),
            purse_start=public.start_date if public else None,
            purse_expiry=public.expiry_date if public else None,
            balance=(purse.balance or 0) if purse is not None else 0,
            overdraft_limit=(purse.allowance or 0) if purse is not None else 0,
        )

    def _charge(
        self,
        card: Transmit,
        tap: TapContext,
        settings: CanteenSettings,
        purse: PurseRead,
        public: PublicInfo,
        decision: Decision,
        ref: CardRef,
    ) -> TapOutcome:
        seen = CardSeen(ref, purse.balance)
        if not decision.accepted or decision.fare is None or decision.fare.amount == 0:
            return seen.outcome(decision)
        record = self._meal_record(settings, public, decision.fare.amount, tap.now)
        return self.charger.charge(card, tap, public, decision, seen, record, key_index=settings.psam_key_index)

    def _answer(self, outcome: TapOutcome, settings: CanteenSettings) -> Mapping[str, Any]:
        """What the POS waiting for the card learns: the price after the discount, no personal data."""
        fare = outcome.decision.fare
        return {
            "card_token": outcome.card.token if outcome.card else None,
            "region": outcome.card.region if outcome.card else None,
            "amount_due": fare.amount if fare else None,
            "price": fare.base if fare else None,
            "band": fare.band if fare else None,
            "payment": settings.payment,
        }

    def _meal_record(
        self, settings: CanteenSettings, public: PublicInfo, amount: int, now: dt.datetime
    ) -> RecordBuilder:
        """The meal's 0x1E record, built once the card's balance after and the PSAM's number are known."""
        city = bytes.fromhex(settings.city_code) if settings.city_code else public.issuer_id[2:4]

        def build(balance_after: int, terminal_number: bytes) -> CappUpdate:
            record = build_process_record(
                transaction_type=TRANSACTION_SINGLE,
                terminal_number=terminal_number,
                industry=INDUSTRY_OTHER,
                line=settings.canteen_code,
                station="0",
                operator_code=settings.operator_code,
                amount=amount,
                balance_after=balance_after,
                time=now.replace(tzinfo=None),
                city_code=city,
                acquirer=bytes.fromhex(settings.acquirer),
            )
            return CappUpdate(SFI_PROCESS, 0x00, record)

        return build

    def count(self, record: Mapping[str, Any]) -> None:
        """Count a committed meal of this reader: every meal, and a discounted one in its period.

        Called by the event hub once the record is committed, in the tap's own thread and
        before its feedback, so the card's next tap sees the count. It must not raise: a
        count that cannot be written is logged, and the record stands.
        """
        if record.get("reader") != self.recorder.reader or record.get("profile") != "canteen":
            return
        token = record.get("card_token")
        if record.get("result") != Outcome.ACCEPTED or not isinstance(token, str):
            return
        tap_id = str(record["tap_id"])
        at = dt.datetime.fromisoformat(str(record["time"]))
        try:
            self.counts.add(tap_id, MEALS_SCOPE, token, at)
            if counts_as_discounted(str(record.get("reason")), record.get("concession")):
                period = meal_period_at(canteen_rules(self.settings).meals, at.time())
                if period is not None:
                    self.counts.add(tap_id, period_scope(period), token, at)
        except OutOfServiceError as error:
            log.error("meal_count_not_written", counted_tap_id=tap_id, reason=error.reason)


def _denied(reason: Reason, card: CardRef | None = None) -> TapOutcome:
    return TapOutcome(Decision(Outcome.DENIED, reason), card)


def _date(value: object) -> dt.date | None:
    return value if isinstance(value, dt.date) else None


def _naive(tap: TapContext) -> dt.datetime:
    return tap.now.replace(tzinfo=None)


def _local(when: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
    return None if when is None else when.astimezone(now.tzinfo).replace(tzinfo=None)
