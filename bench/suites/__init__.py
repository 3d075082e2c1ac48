"""Scoring suites."""
