"""Everything in sscard-terminal that does I/O: readers, virtual devices, daemon, queue, uplink, CLI."""
