"""Commonfeed's ranking core: a pure library (numpy, scipy, implicit, pydantic; no Django)."""
