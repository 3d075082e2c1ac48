"""The static leaderboard: a pure function of result files (imports only bench.schema)."""
