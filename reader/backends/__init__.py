"""Reader backends (PC/SC, NFC, in-process) behind one small interface, driven by one loop."""
