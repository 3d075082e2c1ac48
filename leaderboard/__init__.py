"""The static leaderboard: a pure function of result files.

It imports only ``bench.results``, ``bench.schema`` and ``bench.errors`` from the harness.
"""
