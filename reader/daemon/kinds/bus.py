"""The bus validator: read the holder's age band and the e-purse, decide the fare, charge it.

The card's bytes go down into `protocols` in three conversations, in an order that selects
each application once: the SSSE (`open_ssse` for the card number and region, then
`read_protected` for the birth date, which a repeat rider skips: `BandCache`), `read_purse`
(SELECT, file 0x15, the journey log when transfers are priced, file 0x17 when issuers or
card types are priced; no GET BALANCE), and `purchase`, through the `Charger` that journals
it. INITIALIZE FOR PURCHASE answers the balance and the allowance, and refuses (9401) a
purse that cannot pay. A torn debit of the same card is settled right after the e-purse is
read, before anything is charged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from protocols.exchange import Transmit, command
from protocols.purchase import CappUpdate
from protocols.ssse_auth import PsamCannotAuthenticate, SsseAuthenticationFailed
from protocols.ssse_items import SsseSession, open_ssse, read_protected
from protocols.status import FileNotFound
from protocols.tunion import SFI_PROCESS, PublicInfo, select_tunion
from protocols.tunion_process import build_process_record
from protocols.tunion_read import PurseState, read_purse
from reader.config import BusSettings, ConfigError
from reader.daemon.band_cache import BandCache, KnownBand
from reader.daemon.charge import CardSeen, Charger, own_balance
from reader.daemon.charge import ProcessRecord as RecordBuilder
from reader.daemon.fares import AgeBand, IssuerFacts, age_on, band_for, band_until, ride_from_record
from reader.daemon.journal import CardMark
from reader.daemon.outcome import CardRef, TapContext, TapOutcome
from reader.daemon.policy import BusRules, BusTap, Decision, Outcome, Reason, decide_bus
from reader.daemon.recording import Recorder
from reader.daemon.services import Services
from reader.log import get_logger
from reader.uplink.parameters import Parameters

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
        self.bands = BandCache()
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
        parameters = services.parameters.current() if services.parameters is not None else None
        tap.parameters_version = parameters.version if parameters is not None else None
        rules = bus_rules(settings, parameters)
        table = rules.fares.table
        try:
            session = open_ssse(card, (0x01, 0x07))
        except FileNotFound:
            return _denied(Reason.NOT_A_SOCIAL_SECURITY_CARD)
        card_id = session.values.get("card_identification_code")
        number = session.values.get("card_number")
        if not isinstance(card_id, bytes) or not isinstance(number, str):
            return _denied(Reason.CARD_READ_FAILED)
        ref = CardRef(services.token(number), card_id[:3].hex().upper())
        bands, day = table.age_bands, tap.now.date()
        holder = self._holder(session, ref, bands, day, kept=True) if bands else Holder()
        refusal = self._refusal(holder, ref, settings)
        if refusal is not None:
            return refusal

        needs_management = rules.issuers is not None or bool(table.card_types)
        purse = read_purse(
            card,
            process_records=RECENT_RIDES if table.transfer else 0,
            management=needs_management,
            balances=False,
        )
        if purse.public is not None:
            settled = self.charger.settle_torn(card, purse.public, tap)
            if settled is not None:
                return settled
        problem = _PURSE_PROBLEMS.get(purse.state)
        if problem is not None or purse.public is None:
            self._log_read(ref, holder, problem)
            return _denied(problem or Reason.CARD_READ_FAILED, ref)

        journal = services.journal
        bus_tap = BusTap(
            region=ref.region,
            hotlisted=services.hotlisted(ref.token),
            start=purse.public.start_date,
            expiry=purse.public.expiry_date,
            birth_date=holder.birth_date,
            known_band=holder.known.band if holder.known is not None else None,
            rides=tuple(ride_from_record(record, rules.fares.line_codec) for record in purse.process_records),
            last_paid=_local(journal.last(ref.token, CardMark.PAID), tap.now),
            last_refused=_local(journal.last(ref.token, CardMark.NOT_GENUINE), tap.now),
            issuer=IssuerFacts.from_files(purse.public, purse.management),
            card_type=purse.management.card_kind if purse.management else None,
        )
        decision = decide_bus(bus_tap, rules, tap.now.replace(tzinfo=None))
        if holder.known is not None and not _charged(decision):
            # Only a charged ride proves the card, by the purchase's MACs; any other verdict
            # (free, already paid, refused) rests on the SSSE, so the card proves itself there.
            session = dataclasses.replace(open_ssse(card, ()), values=session.values)
            holder = self._holder(session, ref, bands, day, kept=False)
            refusal = self._refusal(holder, ref, settings)
            if refusal is not None:
                return refusal
            bus_tap = dataclasses.replace(bus_tap, birth_date=holder.birth_date, known_band=None)
            decision = decide_bus(bus_tap, rules, tap.now.replace(tzinfo=None))
            if decision.accepted:
                command(card, select_tunion(), "SELECT T-Union")  # back from the SSSE, for the ride
        self._log_read(ref, holder, problem)
        seen = CardSeen(ref)
        if not decision.accepted or decision.fare is None:
            return seen.outcome(decision)
        if decision.fare.amount == 0:
            # Nothing is debited, so no INITIALIZE tells the balance: the rider is shown it all the same.
            return CardSeen(ref, own_balance(card)).outcome(decision, mark=(CardMark.PAID, tap.now))
        record = self._ride_record(settings, rules.fares.line_code, purse.public, decision.fare.amount, tap.now)
        return self.charger.charge(card, tap, purse.public, decision, seen, record, key_index=settings.psam_key_index)

    def _refusal(self, holder: Holder, ref: CardRef, settings: BusSettings) -> TapOutcome | None:
        """The tap's end when the SSSE read refused the card, or the PSAM could not read it."""
        if holder.not_genuine:
            return _denied(Reason.CARD_NOT_GENUINE)
        refused = holder.refused
        if refused is None:
            return None
        log.warning(
            "tap_psam_cannot_authenticate",
            step=refused.step.value,
            command=refused.command,
            sw=f"{refused.sw:04X}",
            on_birth_date_unreadable=settings.on_birth_date_unreadable,
        )
        if settings.on_birth_date_unreadable == "refuse":
            return _denied(Reason.PSAM_CANNOT_AUTHENTICATE, ref)
        return None

    def _log_read(self, ref: CardRef, holder: Holder, problem: Reason | None) -> None:
        log.info(
            "tap_card_read",
            region=ref.region,
            authenticated=holder.authenticated,
            band_kept=holder.known is not None,
            transport=problem.value if problem else "ok",
        )

    def _holder(
        self, session: SsseSession, ref: CardRef, bands: Sequence[AgeBand], day: dt.date, *, kept: bool
    ) -> Holder:
        """The holder's age band: kept from an earlier tap (when `kept`), or from the birth date (EF06).

        A band kept for the card serves until the day it could change, and only for a ride
        that is charged (the caller checks the verdict, and asks again with `kept` False).
        """
        known = self.bands.get(ref.token, day, bands) if kept else None
        if known is not None:
            return Holder(known=known)
        try:
            items = read_protected(session, self.services.psam_transmit(), (0x0D,))
        except PsamCannotAuthenticate as error:
            # EF06 stays closed, so no birth date and no age band; the card is not at fault.
            return Holder(refused=error)
        except SsseAuthenticationFailed as error:
            log.warning("tap_card_not_genuine", step=error.step.value)
            return Holder(not_genuine=True)
        birth = _date(items.values.get("birth_date"))
        if birth is not None and items.authenticated:
            known = KnownBand(band_for(age_on(birth, day), bands), band_until(birth, day, bands))
            self.bands.put(ref.token, known, bands)
        return Holder(birth_date=birth, authenticated=items.authenticated)

    def _ride_record(
        self, settings: BusSettings, line_code: bytes, public: PublicInfo, amount: int, now: dt.datetime
    ) -> RecordBuilder:
        """The ride's 0x1E record, built once the card's balance after and the PSAM's number are known."""
        city = bytes.fromhex(settings.city_code) if settings.city_code else public.issuer_id[2:4]

        def build(balance_after: int, terminal_number: bytes) -> CappUpdate:
            record = build_process_record(
                transaction_type=TRANSACTION_SINGLE_RIDE,
                terminal_number=terminal_number,
                industry=INDUSTRY_BUS,
                line=line_code,
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


@dataclass(frozen=True)
class Holder:
    """What a tap learnt of the holder for the fare: the birth date, or a band kept from before."""

    birth_date: dt.date | None = None
    known: KnownBand | None = None
    authenticated: bool = False
    refused: PsamCannotAuthenticate | None = None
    """The PSAM could not authenticate the card, so its birth date stays closed."""
    not_genuine: bool = False


def bus_rules(settings: BusSettings, parameters: Parameters | None = None) -> BusRules:
    """The pure rules of the configured line: regions, passback, issuers and fares.

    A bundle of parameters from the back office replaces the whole fare side of `[bus]`, and
    its whitelist the file's; a bundle without a whitelist leaves the file's in force.
    """
    issuers = settings.whitelist.to_rules() if settings.whitelist is not None else None
    if parameters is not None:
        issuers = parameters.issuers or issuers
    return BusRules(
        accepted_regions=tuple(settings.accepted_regions),
        passback=dt.timedelta(seconds=settings.passback_seconds),
        fares=parameters.fares if parameters is not None else settings.fare_rules(),
        issuers=issuers,
    )


def _charged(decision: Decision) -> bool:
    """Whether the verdict sends a purchase, whose MACs prove the card genuine."""
    return decision.accepted and decision.fare is not None and decision.fare.amount > 0


def _denied(reason: Reason, card: CardRef | None = None) -> TapOutcome:
    return TapOutcome(Decision(Outcome.DENIED, reason), card)


def _date(value: object) -> dt.date | None:
    return value if isinstance(value, dt.date) else None


def _local(when: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
    return None if when is None else when.astimezone(now.tzinfo).replace(tzinfo=None)
