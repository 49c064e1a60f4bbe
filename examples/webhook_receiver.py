"""A minimal Commtunnel webhook receiver that verifies every request.

Run it with the endpoint's signing secret (printed once when the endpoint was
created or its secret rotated)::

    WEBHOOK_SECRET=whsec_... python examples/webhook_receiver.py --port 9000

It listens on http://127.0.0.1:9000/ and, for each POST:

* verifies the ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``
  headers with the ``standardwebhooks`` package (the Standard Webhooks
  specification; Commtunnel installs the package). A request that does not
  verify, or is more than 5 minutes old or early, is answered 401 and ignored;
* skips an event whose ``webhook-id`` it has already handled (retries and
  replays carry the same id), answering 204 all the same;
* prints the event as one line of JSON on stdout and answers 204.

During a secret rotation both secrets sign each request; give both,
separated by a space, in ``WEBHOOK_SECRET`` while you switch.

Only the standard library and ``standardwebhooks`` are used, so the same
few lines work in any framework: read the raw body *before* parsing it,
pass it with the headers to ``Webhook(secret).verify``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


class Receiver(BaseHTTPRequestHandler):
    """Answers Commtunnel's POSTs (one handler instance per request)."""

    secrets: list[Webhook] = []
    seen: set[str] = set()
    lock = threading.Lock()  # requests are handled on several threads

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {key.lower(): value for key, value in self.headers.items()}
        event = None
        for webhook in self.secrets:
            try:
                event = webhook.verify(body, headers)
                break
            except WebhookVerificationError:
                continue
        if event is None:
            self.send_response(401)
            self.end_headers()
            return
        with self.lock:
            if headers["webhook-id"] not in self.seen:  # else a retry or a replay
                self.seen.add(headers["webhook-id"])
                # One write per line: print() from two threads can interleave.
                sys.stdout.write(json.dumps(event) + "\n")
                sys.stdout.flush()
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Keep stdout for events: access logs go nowhere."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    secrets = os.environ.get("WEBHOOK_SECRET", "").split()
    if not secrets:
        print("set WEBHOOK_SECRET to the endpoint's whsec_... secret", file=sys.stderr)
        return 2
    Receiver.secrets = [Webhook(secret) for secret in secrets]
    server = ThreadingHTTPServer((args.host, args.port), Receiver)
    print(f"listening on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
