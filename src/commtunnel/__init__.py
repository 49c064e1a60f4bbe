"""Commtunnel: transactional messaging (email first) as a library and as an HTTP API.

In-process use goes through :class:`Commtunnel` (async) or
:class:`SyncCommtunnel`; ``commtunnel serve`` exposes the same services over
HTTP (package ``commtunnel_http``).
"""

from commtunnel.client import Commtunnel, EmailClient, SyncCommtunnel
from commtunnel.config import Settings
from commtunnel.domain.errors import CommtunnelError

__all__ = ["Commtunnel", "CommtunnelError", "EmailClient", "Settings", "SyncCommtunnel"]
__version__ = "0.1.0"
