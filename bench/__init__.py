"""Benchmarks (`make bench`): each writes JSON to bench/results/ and prints a table."""
