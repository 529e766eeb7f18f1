"""Benchmarks: ``make bench`` runs them all and prints one table (see the README's Performance section)."""
