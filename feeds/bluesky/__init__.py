"""Bluesky feed generator: XRPC endpoints (``xrpc``) and service-auth JWTs and DIDs (``auth``)."""
