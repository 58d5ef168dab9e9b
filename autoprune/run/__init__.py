"""A run: its directory, prepared work, one trial, and the ledger that records trials."""
