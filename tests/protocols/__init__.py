"""Tests of the pure protocol code: parsers, builders, conversations over stored dumps."""
