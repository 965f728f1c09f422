"""Run every benchmark in turn (`make bench`)."""

from __future__ import annotations

from bench import apdu_roundtrip
from reader.log import configure_logging


def main() -> None:
    configure_logging("warning")
    apdu_roundtrip.run()


if __name__ == "__main__":
    main()
