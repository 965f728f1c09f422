"""The venue gate (museum, scenic spot, library entry without lending): the card is the ticket.

The gate reads the SSSE with the PSAM's authentication (a genuine card, its validity, its
region, and the birth date when entry is priced by age band), and decides with
`reader.daemon.venue_policy`: hotlist, region, validity, one entry per card per day, the
card's reservation for this time slot, the day's capacity. The gate opens for an entry; the
record carries why (its reason), the holder's band and the entry price of the band (recorded
for the venue's statistics and subsidy claims, never charged).

Entries are counted durably in the queue's database (`reader.daemon.daily_counts`) once their
record is committed. The reservation list is a file the back office delivers
(`ReservationList`), read at start and again on every SIGHUP.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from protocols.exchange import Transmit
from protocols.ssse_auth import PsamCannotAuthenticate, SsseAuthenticationFailed
from protocols.ssse_items import read_items
from protocols.status import FileNotFound
from reader.config import Config, ConfigError, VenueSettings
from reader.daemon.daily_counts import DailyCounts
from reader.daemon.outcome import CardRef, TapContext, TapOutcome
from reader.daemon.policy import Decision, Outcome, Reason
from reader.daemon.recording import Recorder
from reader.daemon.services import Services
from reader.daemon.venue_policy import PriceBand, Slot, VenueRules, VenueTap, decide_entry
from reader.log import get_logger
from reader.uplink.errors import OutOfServiceError

EF05_ITEMS = (0x01, 0x05, 0x06, 0x07)
"""Card identification code, issue and expiry dates, card number."""
EF06_BIRTH_DATE = (0x0D,)
ENTRY_SCOPE = "venue"
TOKEN_LENGTH = 64

log = get_logger(component="pipeline")


class ReservationListError(ConfigError):
    """The reservation file cannot be read or is not a reservation list."""


class ReservationList:
    """Reserved time slots by card token, from the back office's JSON file.

    The file is one JSON object, `{"reservations": [{"card_token": "<64 hex>", "start":
    "2026-05-20T09:00", "end": "2026-05-20T10:00"}, ...]}`, times in the terminal's local
    time; a card may hold several slots. The back office writes it beside the daemon (a new
    file moved into place, so the daemon never reads half of one) and sends SIGHUP.
    """

    def __init__(self, slots: Mapping[str, tuple[Slot, ...]]) -> None:
        self.slots = slots

    @classmethod
    def load(cls, path: Path) -> ReservationList:
        try:
            document = json.loads(path.read_bytes())
        except OSError as error:
            raise ReservationListError(f"{path}: cannot read the reservation list: {error.strerror}") from error
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ReservationListError(f"{path}: the reservation list is not JSON: {error}") from error
        entries = document.get("reservations") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ReservationListError(f"{path}: expected an object with a list 'reservations'")
        slots: dict[str, list[Slot]] = {}
        for number, entry in enumerate(entries):
            token, slot = _entry(entry, f"{path}: reservations[{number}]")
            slots.setdefault(token, []).append(slot)
        return cls({token: tuple(found) for token, found in slots.items()})

    def of(self, token: str) -> tuple[Slot, ...]:
        return self.slots.get(token, ())


def _entry(entry: object, where: str) -> tuple[str, Slot]:
    if not isinstance(entry, dict) or set(entry) != {"card_token", "start", "end"}:
        raise ReservationListError(f"{where}: expected exactly card_token, start and end")
    token, start, end = entry["card_token"], entry["start"], entry["end"]
    if not isinstance(token, str) or len(token) != TOKEN_LENGTH or not _is_hex(token):
        raise ReservationListError(f"{where}: card_token must be the card's 64-hex-digit token")
    try:
        slot = Slot(dt.datetime.fromisoformat(str(start)), dt.datetime.fromisoformat(str(end)))
    except ValueError as error:
        raise ReservationListError(f"{where}: start and end must be local times such as 2026-05-20T09:00") from error
    if slot.start.tzinfo is not None or slot.end.tzinfo is not None or slot.end <= slot.start:
        raise ReservationListError(f"{where}: a slot is two local times (no offset), the end after the start")
    return token.lower(), slot


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def venue_rules(settings: VenueSettings) -> VenueRules:
    """The pure entry rules of the configured venue."""
    return VenueRules(
        accepted_regions=tuple(settings.accepted_regions),
        price=settings.price,
        bands=tuple(PriceBand(b.name, b.min_age, b.price) for b in settings.bands),
        reservations_required=settings.reservations is not None,
        early=dt.timedelta(minutes=settings.early_minutes),
        capacity=settings.daily_capacity,
        once_a_day=settings.once_a_day,
    )


class VenueKind:
    """One venue gate's taps: entry by card, priced by age band, the gate opens."""

    def __init__(self, services: Services, recorder: Recorder) -> None:
        self.services = services
        self.recorder = recorder
        settings = self.settings  # a missing [venue] section stops the daemon at start
        self.counts = DailyCounts(services.queue)
        self._loaded_for: Config = services.config
        self.reservations = ReservationList.load(settings.reservations) if settings.reservations else None
        services.events.observe(self.count)

    @property
    def settings(self) -> VenueSettings:
        """The [venue] section in force: SIGHUP may have replaced it since the last tap."""
        settings = self.services.config.venue
        if settings is None:
            raise ConfigError("a venue terminal needs a [venue] section")
        return settings

    def _reservations(self, settings: VenueSettings) -> ReservationList | None:
        """The reservation list in force: read again after a SIGHUP (a new configuration).

        A list that cannot be read on reload leaves the one read before in force.
        """
        config = self.services.config
        if config is not self._loaded_for:
            self._loaded_for = config
            if settings.reservations is None:
                self.reservations = None
            else:
                try:
                    self.reservations = ReservationList.load(settings.reservations)
                except ReservationListError as error:
                    log.error("reservations_not_reloaded", error=str(error))
                else:
                    log.info("reservations_reloaded", cards=len(self.reservations.slots))
        return self.reservations

    def process(self, card: Transmit, tap: TapContext) -> TapOutcome:
        services = self.services
        settings = self.settings
        reservations = self._reservations(settings)
        ef06 = EF06_BIRTH_DATE if settings.bands else ()
        try:
            items = read_items(card, services.psam_transmit(), EF05_ITEMS, ef06, authenticate=True)
        except FileNotFound:
            return _denied(Reason.NOT_A_SOCIAL_SECURITY_CARD)
        except PsamCannotAuthenticate as error:
            # The gate cannot prove the card genuine: refused, without blaming the card.
            log.warning(
                "tap_psam_cannot_authenticate", step=error.step.value, command=error.command, sw=f"{error.sw:04X}"
            )
            known_id = error.readable.get("card_identification_code")
            known_number = error.readable.get("card_number")
            if not isinstance(known_id, bytes) or not isinstance(known_number, str):
                return _denied(Reason.PSAM_CANNOT_AUTHENTICATE)
            ref = CardRef(services.token(known_number), known_id[:3].hex().upper())
            return _denied(Reason.PSAM_CANNOT_AUTHENTICATE, ref)
        except SsseAuthenticationFailed as error:
            log.warning("tap_card_not_genuine", step=error.step.value)
            return _denied(Reason.CARD_NOT_GENUINE)
        values = items.values
        card_id = values.get("card_identification_code")
        number = items.text("card_number")
        if not isinstance(card_id, bytes) or number is None:
            return _denied(Reason.CARD_READ_FAILED)
        ref = CardRef(services.token(number), card_id[:3].hex().upper())
        log.info("tap_card_read", region=ref.region, authenticated=items.authenticated)
        day = tap.now.date()
        venue_tap = VenueTap(
            region=ref.region,
            hotlisted=services.hotlisted(ref.token),
            issued=_date(values.get("issue_date")),
            expiry=_date(values.get("expiry_date")),
            birth_date=_date(values.get("birth_date")),
            entered_today=self.counts.count(ENTRY_SCOPE, day, ref.token) > 0,
            entries_today=self.counts.count(ENTRY_SCOPE, day),
            slots=reservations.of(ref.token) if reservations is not None else (),
        )
        return TapOutcome(decide_entry(venue_tap, venue_rules(settings), tap.now.replace(tzinfo=None)), ref)

    def count(self, record: Mapping[str, Any]) -> None:
        """Count a committed entry of this reader, for capacity and once a day.

        Called by the event hub once the record is committed, before the tap's feedback. It
        must not raise: a count that cannot be written is logged, and the record stands.
        """
        if record.get("reader") != self.recorder.reader or record.get("profile") != "venue":
            return
        token = record.get("card_token")
        if record.get("result") != Outcome.ACCEPTED or not isinstance(token, str):
            return
        tap_id = str(record["tap_id"])
        try:
            self.counts.add(tap_id, ENTRY_SCOPE, token, dt.datetime.fromisoformat(str(record["time"])))
        except OutOfServiceError as error:
            log.error("entry_count_not_written", counted_tap_id=tap_id, reason=error.reason)


def _denied(reason: Reason, card: CardRef | None = None) -> TapOutcome:
    return TapOutcome(Decision(Outcome.DENIED, reason), card)


def _date(value: object) -> dt.date | None:
    return value if isinstance(value, dt.date) else None
