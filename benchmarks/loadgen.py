"""Fallback HTTP load generator, used only when ``wrk`` cannot be installed.

    python -m benchmarks.loadgen --port N --connections 64 --duration 10 \
        --nonce run --token KEY --body-file body.json

Keep-alive HTTP/1.1 over raw asyncio streams (uvloop when installed), one
request in flight per connection, a unique ``x-idempotency-key`` per request.
Prints one line ``WRKJSON {...}`` with the same fields as ``wrk_send.lua``.
It spends far more CPU per request than wrk, which on a small machine takes
CPU from the server: figures from it are lower bounds, and flagged as such.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


async def _connection(
    k: int, args: argparse.Namespace, body: bytes, deadline: float, out: dict[str, list]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
    head = (
        "POST /v1/public/emails/send HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\n"
        + (f"Authorization: Bearer {args.token}\r\n" if args.token else "")
        + f"Content-Length: {len(body)}\r\n"
    )
    n = 0
    try:
        while time.perf_counter() < deadline:
            n += 1
            request = f"{head}x-idempotency-key: {args.nonce}-{k}-{n}\r\n\r\n".encode() + body
            t0 = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            payload = await reader.readexactly(length) if length else b""
            out["latency"].append(time.perf_counter() - t0)
            status = int(status_line.split()[1])
            if status != 202:
                out["bad"].append(f"{status} {payload[:200].decode(errors='replace')}")
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        out["errors"].append(k)
    finally:
        writer.close()


async def _main(args: argparse.Namespace, body: bytes) -> None:
    out: dict[str, list] = {"latency": [], "bad": [], "errors": []}
    t0 = time.perf_counter()
    deadline = t0 + args.duration
    await asyncio.gather(
        *(_connection(k, args, body, deadline, out) for k in range(args.connections))
    )
    elapsed = time.perf_counter() - t0
    lat = sorted(out["latency"])

    def pct(p: float) -> int:
        return int(lat[min(len(lat) - 1, int(len(lat) * p))] * 1e6) if lat else 0

    print(
        "WRKJSON "
        + json.dumps(
            {
                "requests": len(lat),
                "duration_us": int(elapsed * 1e6),
                "non202": len(out["bad"]),
                "first_non202": out["bad"][0] if out["bad"] else "",
                "connect_errors": 0,
                "read_errors": len(out["errors"]),
                "write_errors": 0,
                "status_errors": 0,
                "timeouts": 0,
                "latency_us": {
                    "mean": sum(lat) / len(lat) * 1e6 if lat else 0,
                    "p50": pct(0.5),
                    "p90": pct(0.9),
                    "p99": pct(0.99),
                    "max": pct(1.0),
                },
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--nonce", default="run")
    parser.add_argument("--token", default="")
    parser.add_argument("--body-file", required=True)
    args = parser.parse_args()
    with open(args.body_file, "rb") as f:
        body = f.read()
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(args, body))
    else:
        uvloop.run(_main(args, body))


if __name__ == "__main__":
    main()
