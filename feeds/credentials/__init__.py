"""App credentials: bearer tokens (``auth``) and their rate limits (``throttling``)."""
