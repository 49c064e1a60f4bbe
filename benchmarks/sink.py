"""A minimal SMTP sink for the delivery benchmark, run as its own process.

    python -m benchmarks.sink --port 2525 [--loop uvloop|asyncio]

It accepts every message (aiosmtpd ``Controller`` on 127.0.0.1), counts them
and their bytes, and is driven over stdin/stdout, one command per line:

    count   ->  "<messages> <bytes>"
    reset   ->  "ok"         (counters back to zero)
    quit    ->  (exits; EOF on stdin does the same)

It prints ``ready <port> <loop>`` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from typing import Any

from aiosmtpd.controller import Controller


class CountingHandler:
    """Accepts everything; counts messages and payload bytes."""

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.messages += 1
            self.bytes += len(envelope.original_content or b"")
        return "250 2.0.0 OK"

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.messages, self.bytes

    def reset(self) -> None:
        with self._lock:
            self.messages = 0
            self.bytes = 0


def _new_loop(kind: str) -> tuple[asyncio.AbstractEventLoop, str]:
    if kind == "uvloop":
        try:
            import uvloop

            return uvloop.new_event_loop(), "uvloop"
        except ImportError:
            pass
    return asyncio.new_event_loop(), "asyncio"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args(argv)

    handler = CountingHandler()
    loop, loop_name = _new_loop(args.loop)
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=args.port,
        loop=loop,
        data_size_limit=10 * 1024 * 1024,
        ready_timeout=10.0,
    )
    controller.start()
    try:
        print(f"ready {args.port} {loop_name}", flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "count":
                messages, size = handler.snapshot()
                print(f"{messages} {size}", flush=True)
            elif command == "reset":
                handler.reset()
                print("ok", flush=True)
            elif command == "quit":
                break
            elif command:
                print(f"error unknown command {command!r}", flush=True)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
