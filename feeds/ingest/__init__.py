"""Intake from apps: catalogue batches (creators, items) and interaction events, each validated
by one strict gate (``schemas``) and written by ``services``."""
