"""Where ownership, quota counters and the rate limit live (see ``base.Ledger``)."""
