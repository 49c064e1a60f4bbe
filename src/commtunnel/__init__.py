"""Commtunnel: transactional messaging (email, SMS, WhatsApp) as a library and as an HTTP API.

In-process use goes through :class:`Commtunnel` (async) or
:class:`SyncCommtunnel`, whose ``email`` and ``sms`` attributes are the
channel clients (:class:`EmailClient`, :class:`SmsClient`); ``commtunnel
serve`` exposes the same services over HTTP (package ``commtunnel_http``).
"""

from commtunnel.client import Commtunnel, EmailClient, SmsClient, SyncCommtunnel
from commtunnel.config import Settings
from commtunnel.domain.errors import CommtunnelError

__all__ = [
    "Commtunnel",
    "CommtunnelError",
    "EmailClient",
    "Settings",
    "SmsClient",
    "SyncCommtunnel",
]
__version__ = "0.1.0"
