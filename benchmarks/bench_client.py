"""How many requests a second one `dynamo bench` process can drive before it, not the server, limits.

    .venv/bin/python -m benchmarks.bench_client [--answer-len 100] [--rates 25,50,100,200,400]

The server here is a stand-in that costs next to nothing: a separate process that answers every chat
completion with the same prepared stream of ``--answer-len`` token events (one chunk each, usage at the
end), so what saturates is the client. For each offered rate the multi-round QA load runs for
``--seconds``; printed: the measured sending rate, rounds sent late (users that could not keep their
QPS), the client's CPU time per request, and its CPU use. The client keeps up while the sending rate
stays at the offered one with no late rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import time

from dynamo_cli.bench.multi_round import LoadSpec, MultiRoundLoad
from dynamo_cli.bench.report import summarize
from dynamo_cli.bench.workload import Workload
from dynamo_cli.transport.ports import free_port


def _response(answer_len: int) -> bytes:
    events = [b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n']
    events += [b'data: {"choices":[{"index":0,"delta":{"content":" tok"}}]}\n\n'] * answer_len
    events.append(
        b'data: {"choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":%d}}\n\n' % answer_len
    )
    events.append(b"data: [DONE]\n\n")
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + body


def _serve(port: int, answer_len: int) -> None:
    raw = _response(answer_len)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(n)
                writer.write(raw)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def measure(port: int, qps: float, args: argparse.Namespace) -> dict[str, float]:
    users = max(8, int(qps))  # each user sends one request a second at most
    spec = LoadSpec(f"http://127.0.0.1:{port}/v1", "m", num_users=users, num_rounds=args.rounds, qps=qps,
                    duration=args.seconds)  # fmt: skip
    load = MultiRoundLoad(spec, Workload(num_rounds=args.rounds, shared_system_prompt=args.prompt_len,
                                         user_history_prompt=0, answer_len=args.answer_len))  # fmt: skip
    cpu0, t0 = time.process_time(), time.perf_counter()
    result = asyncio.run(load.run())
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    s = summarize(result)
    return {
        "offered": qps,
        "sent": s["qps_sent"] or 0.0,
        "late_rounds": s["late_rounds"],
        "failed": s["failed"],
        "cpu_ms_per_request": 1000 * cpu / max(1, len(result.records)),
        "client_cpu_share": cpu / wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="25,50,100,200,400", help="offered requests/s, comma-separated")
    ap.add_argument("--answer-len", type=int, default=100)
    ap.add_argument("--prompt-len", type=int, default=1000, help="tokens of shared system prompt")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    port = free_port()
    server = mp.get_context("spawn").Process(target=_serve, args=(port, args.answer_len), daemon=True)
    server.start()
    time.sleep(1.0)
    try:
        rows = [measure(port, float(q), args) for q in args.rates.split(",")]
    finally:
        server.terminate()
        server.join(5)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'offered/s':>10}{'sent/s':>10}{'late':>7}{'failed':>8}{'CPU ms/req':>12}{'client CPU':>12}")
    for r in rows:
        print(f"{r['offered']:>10.0f}{r['sent']:>10.1f}{r['late_rounds']:>7}{r['failed']:>8}"
              f"{r['cpu_ms_per_request']:>12.2f}{r['client_cpu_share']:>11.0%}")  # fmt: skip


if __name__ == "__main__":
    main()
