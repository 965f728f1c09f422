"""One charged tap in a process of its own, for the crash tests of test_charge_fast.py.

    python -m tests.daemon.fast_crash WORKDIR CARD_STATE PSAM_STATE

The terminal (`fast_rig.Rig`) keeps its queue and journal in WORKDIR, the card and the PSAM
their memory in state files, so all three outlive the process. With `SSCARD_CRASH_AT` set,
the process SIGKILLs itself at that step of the tap (`reader.daemon.crashpoints`), as a power
cut would stop it; the test then reads what each of the three kept.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sscard_sim.card import VirtualCard
from sscard_sim.psam import VirtualPsam
from tests.daemon.fast_rig import Rig


def main(argv: list[str]) -> int:
    workdir, card_state, psam_state = (Path(arg) for arg in argv)
    psam = VirtualPsam.from_profile("demo-psam", state_path=psam_state)
    with Rig(workdir, psam=psam) as rig:
        rig.tap(VirtualCard.from_profile("sichuan", state_path=card_state))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
