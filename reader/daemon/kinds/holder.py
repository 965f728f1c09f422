"""Library gates and pharmacy POS: who holds the card, from the SSSE, and whether it is served.

Both read the social security application with the PSAM's authentication and decide by
hotlist, region and validity; the pharmacy also hands the holder's identity to the POS that
asked for it through the local API (medical-insurance settlement needs it), never to a
record or a log.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from protocols.exchange import Transmit
from protocols.ssse import ItemValue
from protocols.ssse_auth import PsamCannotAuthenticate, SsseAuthenticationFailed
from protocols.ssse_items import read_items
from protocols.status import FileNotFound
from reader.config import ConfigError, HolderSettings
from reader.daemon.outcome import CardRef, TapContext, TapOutcome
from reader.daemon.policy import Decision, HolderRules, HolderTap, Outcome, Reason, decide_holder
from reader.daemon.recording import Recorder
from reader.daemon.services import Services
from reader.log import get_logger

log = get_logger(component="pipeline")

EF05_ITEMS = (0x01, 0x05, 0x06, 0x07)
"""Card identification code, card number, issue and expiry dates."""
PHARMACY_EF06_ITEMS = (0x08, 0x09, 0x4E)
"""Social security number, name and its extension: what settlement identifies the holder by."""


@dataclass(frozen=True)
class HolderRead:
    """A holder kind's verdict, and the SSSE items it read (for the pharmacy's answer)."""

    outcome: TapOutcome
    values: Mapping[str, ItemValue]


class HolderKind:
    """The shared read and decision of the library and the pharmacy."""

    ef06: tuple[int, ...] = ()
    section = "library"

    def __init__(self, services: Services, recorder: Recorder) -> None:
        self.services = services
        _ = self.rules  # a missing section stops the daemon at start, not at the first tap

    @property
    def rules(self) -> HolderRules:
        """The rules of the section in force: SIGHUP may have replaced it since the last tap."""
        settings: HolderSettings | None = getattr(self.services.config, self.section)
        if settings is None:
            raise ConfigError(f"a {self.section} terminal needs a [{self.section}] section")
        return HolderRules(tuple(settings.accepted_regions))

    def process(self, card: Transmit, tap: TapContext) -> TapOutcome:
        return self.read(card, tap).outcome

    def read(self, card: Transmit, tap: TapContext) -> HolderRead:
        services = self.services
        try:
            items = read_items(card, services.psam_transmit(), EF05_ITEMS, self.ef06, authenticate=True)
        except FileNotFound:
            return _denied(Reason.NOT_A_SOCIAL_SECURITY_CARD)
        except PsamCannotAuthenticate as error:
            # The terminal cannot prove the card genuine: refused, but the card is not blamed,
            # and the record still names it by the EF05 items read before authentication.
            log.warning(
                "tap_psam_cannot_authenticate", step=error.step.value, command=error.command, sw=f"{error.sw:04X}"
            )
            known_id = error.readable.get("card_identification_code")
            known_number = error.readable.get("card_number")
            if not isinstance(known_id, bytes) or not isinstance(known_number, str):
                return _denied(Reason.PSAM_CANNOT_AUTHENTICATE)
            return _denied(
                Reason.PSAM_CANNOT_AUTHENTICATE, CardRef(services.token(known_number), known_id[:3].hex().upper())
            )
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
        holder_tap = HolderTap(
            region=ref.region,
            hotlisted=services.hotlisted(ref.token),
            issued=_date(values.get("issue_date")),
            expiry=_date(values.get("expiry_date")),
        )
        return HolderRead(TapOutcome(decide_holder(holder_tap, self.rules, tap.now), ref), values)


class LibraryKind(HolderKind):
    """A library gate: the card is the library card; the gate opens for a served holder."""

    section = "library"


class PharmacyKind(HolderKind):
    """A pharmacy POS: a served holder's identity goes to the POS that asked for the card."""

    section = "pharmacy"
    ef06 = PHARMACY_EF06_ITEMS

    def process(self, card: Transmit, tap: TapContext) -> TapOutcome:
        read = self.read(card, tap)
        outcome = read.outcome
        if not outcome.decision.accepted or outcome.card is None:
            return outcome
        values = read.values
        name = _text(values.get("name")) + _text(values.get("name_extension"))
        card_id = values.get("card_identification_code")
        # What medical-insurance settlement identifies the card by, beside the holder's ID
        # number and name; handed to the POS that asked, never recorded or logged.
        answer = {
            "tap_id": tap.tap_id,
            "card_token": outcome.card.token,
            "region": outcome.card.region,
            "card_identification_code": card_id.hex().upper() if isinstance(card_id, bytes) else None,
            "card_number": values.get("card_number"),
            "social_security_number": values.get("social_security_number"),
            "name": name or None,
        }
        return TapOutcome(outcome.decision, outcome.card, answer=answer)


def _denied(reason: Reason, card: CardRef | None = None) -> HolderRead:
    return HolderRead(TapOutcome(Decision(Outcome.DENIED, reason), card), {})


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _date(value: object) -> dt.date | None:
    return value if isinstance(value, dt.date) else None
