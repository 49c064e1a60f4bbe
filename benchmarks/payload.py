"""The email every benchmark sends: ~2 KB as a multipart/alternative message.

One definition, so the commtunnel figure and its baseline move the same bytes.
"""

from __future__ import annotations

import json
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import formatdate

SENDER_DOMAIN = "example.com"
FROM = "Bench <bench@example.com>"
FROM_ADDR = "bench@example.com"
TO = "user@example.net"
SUBJECT = "Your order #12345 has shipped"

_PARAGRAPH = (
    "Hello, your order has been packed and handed to the carrier. "
    "You can follow the parcel with the tracking link below. "
)
TEXT = (_PARAGRAPH * 7).strip()  # ~830 characters
HTML = (
    "<html><body><h1>Your order has shipped</h1>"
    + "".join(f"<p>{_PARAGRAPH}</p>" for _ in range(6))
    + '<p><a href="https://example.com/track/12345">Track it</a></p></body></html>'
)  # ~900 characters


def http_body() -> bytes:
    """The JSON body of ``POST /v1/public/emails/send``."""
    return json.dumps(
        {"from": FROM, "to": TO, "subject": SUBJECT, "html": HTML, "text": TEXT},
        separators=(",", ":"),
    ).encode()


def raw_mime(n: int) -> bytes:
    """The n-th prebuilt message for the raw aiosmtplib baseline (stdlib, compat32, CRLF, 7bit)."""
    policy = compat32.clone(linesep="\r\n")
    msg = MIMEMultipart("alternative", policy=policy)
    msg.attach(MIMEText(TEXT, "plain", "us-ascii", policy=policy))
    msg.attach(MIMEText(HTML, "html", "us-ascii", policy=policy))
    msg["From"] = FROM
    msg["To"] = TO
    msg["Subject"] = SUBJECT
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = f"<raw-{n}@{SENDER_DOMAIN}>"
    return msg.as_bytes(policy=policy)
