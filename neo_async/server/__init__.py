"""The OpenAI-compatible HTTP service (aiohttp): `create_app` builds it, `serve.main` runs it."""

from neo_async.server.app import create_app

__all__ = ["create_app"]
