"""A small load generator: threads with keep-alive ``http.client`` connections.

Run as a second process by W4: ``python -m benchmarks.loadgen --port P --path /x ...``.
The load is bounded by a request count and a time limit; it prints one JSON line. With
``--login /login/``, each client thread first POSTs ``/login/<n>`` (its own account ``n``)
and sends the session cookie it got with every later request.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True, help="a path ending in '/'; a row id is appended")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--login", help="a path ending in '/': log in first (account id appended)")
    parser.add_argument(
        "--accounts", type=int, default=1, help="accounts to log in as, round-robin"
    )
    args = parser.parse_args(argv)
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        parser.error("the load generator only targets loopback addresses")

    lock = threading.Lock()
    issued = [0]
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + args.seconds

    def log_in(connection: http.client.HTTPConnection, account: int) -> dict[str, str]:
        connection.request(
            "POST", f"{args.login}{account}", body=b"", headers={"Content-Length": "0"}
        )
        response = connection.getresponse()
        response.read()
        cookie = response.getheader("Set-Cookie")
        if response.status != 200 or not cookie:
            raise RuntimeError(f"login as {account} answered {response.status}")
        return {"Content-Length": "0", "Cookie": cookie.split(";", 1)[0]}

    def worker(index: int) -> None:
        connection = http.client.HTTPConnection(args.host, args.port, timeout=args.timeout)
        mine: list[float] = []
        headers = {"Content-Length": "0"}
        try:
            if args.login:
                try:
                    headers = log_in(connection, index % args.accounts + 1)
                except (OSError, http.client.HTTPException, RuntimeError) as exc:
                    with lock:
                        errors.append(f"login: {exc}")
                    return
            while time.monotonic() < deadline:
                with lock:
                    n = issued[0]
                    if n >= args.requests:
                        break
                    issued[0] = n + 1
                path = f"{args.path}{(n * 7919) % args.rows + 1}"
                start = time.perf_counter()
                try:
                    connection.request("POST", path, body=b"", headers=headers)
                    response = connection.getresponse()
                    response.read()
                    if response.status != 200:
                        with lock:
                            errors.append(f"HTTP {response.status}")
                except (OSError, http.client.HTTPException) as exc:
                    with lock:
                        errors.append(type(exc).__name__)
                    connection.close()
                    connection = http.client.HTTPConnection(
                        args.host, args.port, timeout=args.timeout
                    )
                    continue
                mine.append(time.perf_counter() - start)
        finally:
            connection.close()
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(fraction: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, round(fraction * (len(latencies) - 1)))]

    print(
        json.dumps(
            {
                "ok": len(latencies),
                "errors": len(errors),
                "error_kinds": sorted(set(errors))[:5],
                "elapsed": elapsed,
                "rps": len(latencies) / elapsed if elapsed else 0.0,
                "p50": pct(0.50),
                "p99": pct(0.99),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
