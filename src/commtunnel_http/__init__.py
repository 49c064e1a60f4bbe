"""The HTTP adapter: the public API of Commtunnel served by Starlette.

Thin by design (``../shared/DESIGN.md``): routes parse, call the facade's
services and serialize; every rule lives in :mod:`commtunnel`.
"""

from commtunnel_http.app import create_app

__all__ = ["create_app"]
