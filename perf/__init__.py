"""Benchmark scripts: ``python -m perf`` runs every ``perf/*_perf.py`` module's ``main()``.

They print measurements and ratios against a baseline measured in the same run; a missed target is
printed as ``MISSED``, never turned into a failure (timing belongs in reports, not in tests).
"""
