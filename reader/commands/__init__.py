"""Subcommands of `sscard`, one module each; every module exposes `register(subparsers)`."""
