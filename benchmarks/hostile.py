"""Hostile requests: how fast each is refused, and whether it stalls the streams of everyone else.

    .venv/bin/python -m benchmarks.hostile [--only 12MiB] [--skip '64MiB one word'] [--json]

Starts `dynamo run agg --engine mocker --workers 2` at speedup 1 (a token every ~6 ms, so a stream
lasts seconds). For each hostile input it starts 8 ordinary streaming chats, waits until all 8 stream
and 1 s more, then sends the hostile request on its own connection and times it (send start -> whole
response read). The streams are closed shortly after the answer; for them it reports the longest gap
between two chunks that overlaps the hostile request's window (send start -> answer + 0.25 s), and, as
the baseline, the longest gap of the same streams in the 1 s before the send. The targets: each input
refused in under 1 s, and no gap over 100 ms. Before the next input the deployment must serve a
one-token chat again (how long it refused them is noted); one that died or does not serve within 20 s
is replaced, and said so, with the end of its log on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from dynamo_cli.deployment.handle import Deployment, start

MiB = 1 << 20
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


# ---- the inputs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hostile:
    name: str
    path: str
    body: Callable[[str], bytes]  # model -> request body (built on demand: some are 64 MiB)
    chunked: bool = False  # sent with Transfer-Encoding: chunked, no Content-Length to refuse it by


# Every input asks for a few tokens: one the server wrongly accepts costs a moment, not a context's worth.
_FEW = 16


def _body(model: str, **fields: object) -> bytes:
    return orjson.dumps({"model": model, "max_tokens": _FEW, **fields})


_HI = {"role": "user", "content": "hi"}


def _chat(model: str, **fields: object) -> bytes:
    return _body(model, messages=[_HI], **fields)


def _raw_content(raw: bytes) -> Callable[[str], bytes]:
    """A chat whose one user message is ``raw``, pasted between the quotes as it is (no escaping)."""

    def build(model: str) -> bytes:
        head = b'{"model":' + orjson.dumps(model) + b',"messages":[{"role":"user","content":"'
        return head + raw + b'"}],"max_tokens":%d}' % _FEW

    return build


def _repeated(unit: bytes, size: int) -> Callable[[str], bytes]:
    return lambda model: _raw_content(unit * (size // len(unit)))(model)


def _nested(model: str, depth: int = 10**5) -> bytes:
    return _chat(model)[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}"


_TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
_TOOL_TURN = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "tool_calls": [_TOOL_CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    {"role": "user", "content": "Thanks. And tomorrow?"},
]


def _big_tool(model: str) -> bytes:
    fn = {"name": "f", "description": "d" * (10 * 10**6), "parameters": {"type": "object", "properties": {}}}
    return _chat(model, tools=[{"type": "function", "function": fn}])


INPUTS: list[Hostile] = [
    Hostile("chat 64MiB one word", CHAT, _repeated(b"a", 64 * MiB)),
    Hostile("chat 64MiB 'a b '", CHAT, _repeated(b"a b ", 64 * MiB)),
    Hostile("chat 64MiB chunked", CHAT, _repeated(b"a b ", 64 * MiB), chunked=True),
    Hostile("chat 12MiB one word", CHAT, _repeated(b"a", 12 * MiB)),
    Hostile("chat 12MiB 'a b '", CHAT, _repeated(b"a b ", 12 * MiB)),
    Hostile("cmpl 10^6 token ids", COMPLETIONS, lambda m: _body(m, prompt=[1] * 10**6)),
    Hostile("cmpl token id 10^9", COMPLETIONS, lambda m: _body(m, prompt=[1, 2, 10**9])),
    Hostile("chat 10^5 messages", CHAT, lambda m: _body(m, messages=[_HI] * 10**5)),
    Hostile("JSON nested 10^5 deep", CHAT, _nested),
    # Parsing costs per value: 15 MiB of empty arrays is ~5M of them (~0.6 s for orjson, GIL held).
    Hostile("JSON 5M empty arrays", CHAT, lambda m: _chat(m, x=[[]] * (5 << 20))),
    Hostile("chat 10^5 stop strings", CHAT, lambda m: _chat(m, stop=[f"x{i}" for i in range(10**5)])),
    Hostile("chat logit_bias 10^5", CHAT, lambda m: _chat(m, logit_bias={str(i): 1 for i in range(10**5)})),
    Hostile("chat 10MB tools", CHAT, _big_tool),
    Hostile("cmpl prompt ''", COMPLETIONS, lambda m: _body(m, prompt="")),
    Hostile("chat messages []", CHAT, lambda m: _body(m, messages=[])),
    Hostile("invalid UTF-8", CHAT, _raw_content(b"\xff\xfe")),
    Hostile("lone surrogate", CHAT, _raw_content(b"\\ud800")),
    Hostile("valid: tool_calls, no text", CHAT, lambda m: _body(m, messages=_TOOL_TURN)),
]  # fmt: skip


# ---- a lean HTTP/1.1 client -------------------------------------------------------------------------
def request_bytes(host: str, port: int, path: str, body: bytes, chunked: bool = False) -> bytes:
    """The request line and headers."""
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n{length}\r\n\r\n"
    ).encode()


def stream_body(model: str, max_tokens: int, seed: int) -> bytes:
    """An ordinary streaming chat that generates exactly ``max_tokens`` tokens, usage at the end."""
    return orjson.dumps(
        {"model": model, "messages": [{"role": "user", "content": f"Tell me story number {seed}."}],
         "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
         "stream_options": {"include_usage": True}}
    )  # fmt: skip


@dataclass
class Stream:
    """One streaming request: the arrival time (perf_counter) and bytes of each HTTP chunk."""

    status: int = 0
    times: list[float] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    done: bool = False  # the terminating zero-length chunk arrived
    closed_at: float | None = None  # closed by us before it was done
    error: str | None = None

    def events(self) -> list[dict]:
        """The SSE data objects, [DONE] left out."""
        out = []
        for line in b"".join(self.chunks).split(b"\n"):
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                out.append(orjson.loads(line[6:]))
        return out

    def finish_reason(self) -> str | None:
        reasons = [c["finish_reason"] for e in self.events() for c in e.get("choices", [])]
        return next((r for r in reversed(reasons) if r), None)

    def usage(self) -> dict | None:
        return next((e["usage"] for e in reversed(self.events()) if e.get("usage")), None)

    def content_chunks(self) -> int:
        choices = [c for e in self.events() for c in e.get("choices", [])]
        return sum(1 for c in choices if c.get("delta", {}).get("content"))

    def failed(self) -> bool:
        """No connection, an error status, or an error event in the stream."""
        return bool(self.error) or self.status != 200 or any(b'"error":{' in c for c in self.chunks)

    def arrivals(self) -> list[float]:
        """Chunk times, plus the close time of a stream we cut: silence until then is a gap too."""
        return self.times + ([self.closed_at] if self.closed_at is not None else [])

    def longest_gap(self, t0: float, t1: float, *, inside: bool = False) -> float:
        """The longest interval between two arrivals that overlaps [t0, t1] (seconds); with
        ``inside``, only those that lie wholly within it."""
        pairs = itertools.pairwise(self.arrivals())
        if inside:
            return max((b - a for a, b in pairs if a >= t0 and b <= t1), default=0.0)
        return max((b - a for a, b in pairs if b >= t0 and a <= t1), default=0.0)

    def gaps(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.times)]


async def run_stream(host: str, port: int, path: str, body: bytes, out: Stream) -> None:
    """Send one streaming request and record its chunks into ``out`` until done or cancelled."""
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
    except OSError as e:
        out.error = f"{type(e).__name__}: {e}"
        return
    try:
        writer.write(request_bytes(host, port, path, body) + body)
        head = await reader.readuntil(b"\r\n\r\n")
        out.status = int(head.split(b" ", 2)[1])
        if b"transfer-encoding: chunked" not in head.lower():
            n = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            out.chunks.append(await reader.readexactly(n))
            out.times.append(time.perf_counter())
            out.done = True
            return
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                out.done = True
                return
            data = await reader.readexactly(size + 2)
            out.times.append(time.perf_counter())
            out.chunks.append(data[:-2])
    except asyncio.CancelledError:
        out.closed_at = time.perf_counter()
        raise
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        out.error = f"{type(e).__name__}: {e}"
    finally:
        writer.close()


@dataclass
class Answer:
    """The hostile request's outcome; ``status`` 0 when no response came (``error`` says why)."""

    status: int = 0
    body: bytes = b""
    sent_at: float = 0.0
    answered_at: float = 0.0
    error: str | None = None

    @property
    def seconds(self) -> float:
        return self.answered_at - self.sent_at

    def json(self) -> dict:
        return orjson.loads(self.body)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append((await reader.readexactly(size + 2))[:-2])
        await reader.readuntil(b"\r\n")
        return status, b"".join(parts)
    if b"content-length: " in lower:
        n = int(lower.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        return status, await reader.readexactly(n)
    return status, await reader.read()


async def send_hostile(
    host: str, port: int, path: str, body: bytes, timeout: float = 60, chunked: bool = False
) -> Answer:
    """POST ``body`` on a fresh connection, writing and reading at once: a server may answer (413)
    before it has read the whole body, and that answer counts even if it then stops reading."""
    ans = Answer(sent_at=time.perf_counter())
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
    except OSError as e:
        ans.answered_at, ans.error = time.perf_counter(), f"{type(e).__name__}: {e}"
        return ans

    async def write() -> None:
        writer.write(request_bytes(host, port, path, body, chunked))
        view = memoryview(body)
        for i in range(0, len(view), MiB):  # 1 MiB at a time: no long copy stalls this loop
            part = view[i : i + MiB]
            if chunked:
                writer.write(b"%x\r\n" % len(part))
            writer.write(part)
            if chunked:
                writer.write(b"\r\n")
            await writer.drain()
        if chunked:
            writer.write(b"0\r\n\r\n")

    sender = asyncio.create_task(write(), name="hostile-write")
    try:
        ans.status, ans.body = await asyncio.wait_for(_read_response(reader), timeout)
    except asyncio.TimeoutError:
        ans.error = f"no answer in {timeout:.0f} s"
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        ans.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    ans.answered_at = time.perf_counter()
    sender.cancel()
    try:
        await sender
    except asyncio.CancelledError:
        pass
    except OSError as e:  # the server stopped reading: worth saying only if no answer came
        ans.error = ans.error or f"write failed: {type(e).__name__}"
    writer.close()
    return ans


# ---- one round: 8 streams, one hostile request --------------------------------------------------------
@dataclass
class Round:
    answer: Answer | None
    streams: list[Stream]
    window: tuple[float, float]  # the hostile request's, plus the margin
    before: tuple[float, float]  # the same length of quiet time before the send (the baseline)

    def gap(self) -> float:
        return max(s.longest_gap(*self.window) for s in self.streams)

    def baseline_gap(self) -> float:
        return max(s.longest_gap(*self.before, inside=True) for s in self.streams)

    def covered(self) -> bool:
        """Every stream was still running at the end of the window, so a stall would show."""
        return all(s.arrivals() and s.arrivals()[-1] >= self.window[1] for s in self.streams)


async def hostile_round(
    url: str,
    model: str,
    hostile: Hostile | None,
    *,
    streams: int = 8,
    max_tokens: int = 200,
    settle: float = 1.0,
    margin: float = 0.25,
    cut: bool = True,
    timeout: float = 60,
) -> Round:
    """Start ``streams`` streaming chats; once all stream and ``settle`` s more, send ``hostile``
    (None for a baseline round: then the window is ``settle`` s long). With ``cut`` the streams are
    closed ``margin`` s after the answer, else they are run to their end."""
    body = hostile.body(model) if hostile is not None else b""  # before the streams: it takes a while
    host, port = url.removeprefix("http://").rsplit(":", 1)
    port_n = int(port)
    recs = [Stream() for _ in range(streams)]
    bodies = [stream_body(model, max_tokens, i) for i in range(streams)]
    tasks = [
        asyncio.create_task(run_stream(host, port_n, CHAT, b, r), name=f"stream-{i}")
        for i, (b, r) in enumerate(zip(bodies, recs, strict=True))
    ]
    deadline = time.perf_counter() + 30
    while not all(len(r.times) >= 2 or r.error or r.done for r in recs):  # role chunk + first token
        if time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(settle)
    before = (time.perf_counter() - settle, time.perf_counter())
    answer = None
    if hostile is None:
        await asyncio.sleep(settle)
        window = (before[1], time.perf_counter())
    else:
        answer = await send_hostile(host, port_n, hostile.path, body, timeout, hostile.chunked)
        await asyncio.sleep(margin)
        window = (answer.sent_at, answer.answered_at + margin)
    if cut:
        for t in tasks:
            t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return Round(answer, recs, window, before)


# ---- the benchmark ----------------------------------------------------------------------------------
def _row(name: str, rnd: Round, recovered_s: float | None) -> dict:
    ans = rnd.answer
    code = None
    if ans is not None and ans.status and ans.body[:1] == b"{":
        err = orjson.loads(ans.body).get("error") or {}
        code = err.get("code")
    return {
        "input": name,
        "status": (ans.status or ans.error) if ans else None,
        "code": code,
        "seconds": round(ans.seconds, 3) if ans else None,
        "gap_ms": round(rnd.gap() * 1000, 1),
        "baseline_gap_ms": round(rnd.baseline_gap() * 1000, 1),
        "covered": rnd.covered(),
        "streams_failed": sum(1 for s in rnd.streams if s.failed()),
        "serving_again_s": None if recovered_s is None else round(recovered_s, 2),  # None: it died
    }


def _print_row(r: dict) -> None:
    status = "-" if r["status"] is None else str(r["status"])
    if r["code"]:
        status += f" {r['code']}"
    secs = "-" if r["seconds"] is None else f"{r['seconds']:.3f}"
    notes = [] if r["covered"] else ["streams ended inside the window"]
    if r["streams_failed"]:
        notes.append(f"{r['streams_failed']} streams failed")
    if r["serving_again_s"] is None:
        notes.append("THE DEPLOYMENT DIED (restarted for the next input)")
    elif r["serving_again_s"] > 0:
        notes.append(f"refused ordinary requests for {r['serving_again_s']:.1f} s")
    gaps = f"{r['gap_ms']:>10.1f} {r['baseline_gap_ms']:>10.1f}"
    print(f"{r['input']:<32} {status[:40]:<40} {secs:>9} {gaps}  {'; '.join(notes)}".rstrip(), flush=True)


async def _serving_again(dep: Deployment, wait: float, limit: float = 20) -> float | None:
    """Seconds from ``wait`` s from now until a one-token chat succeeds (0: at once), or None when
    it does not within ``limit`` s or the launcher is gone. (A frontend whose loop stalled past its
    discovery lease exits a moment after the stall ends, hence ``wait``; one that timed out its
    streams meanwhile writes their workers off for a while.)"""
    await asyncio.sleep(wait)
    host, port = dep.url.removeprefix("http://").rsplit(":", 1)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit and dep.proc.poll() is None:
        ans = await send_hostile(host, int(port), CHAT, _chat(dep.model, max_tokens=1), timeout=10)
        if ans.status == 200:
            return ans.sent_at - t0
        await asyncio.sleep(0.2)
    return None


def _replace(dep: Deployment, tmp: Path, name: str) -> Deployment:
    tail = "\n".join(dep.log_text().splitlines()[-30:])
    print(f"the deployment stopped serving after '{name}'; the end of its log:\n{tail}\n", file=sys.stderr)
    try:
        dep.stop(timeout=20)
    except Exception:  # already half gone: make sure it is all gone
        dep.kill()
    return _start(tmp)


def _start(tmp: Path) -> Deployment:
    return start(tmp, "agg", "--engine", "mocker", "--workers", "2", "--speedup", "1",
                 "--set", "log_level=warning")  # fmt: skip


async def _bench(tmp: Path, inputs: list[Hostile], args: argparse.Namespace) -> tuple[list[dict], int]:
    """Every input in turn, on one deployment while it serves; returns the rows and how many
    deployments had to be replaced."""
    dep = _start(tmp)
    opts = {"max_tokens": args.max_tokens, "timeout": args.timeout}
    rows, deaths = [], 0
    try:
        for _ in range(2):  # warm-up, then the baseline
            base = await hostile_round(dep.url, dep.model, None, **opts)
        rows.append(_row("(none: baseline)", base, 0.0))
        if not args.json:
            _print_row(rows[-1])
        for h in inputs:
            rnd = await hostile_round(dep.url, dep.model, h, **opts)
            slow = rnd.answer is None or rnd.answer.error is not None or rnd.answer.seconds > 5
            again = await _serving_again(dep, 3.0 if slow else 0.0)
            rows.append(_row(h.name, rnd, again))
            if not args.json:
                _print_row(rows[-1])
            if again is None:
                deaths += 1
                dep = _replace(dep, tmp, h.name)
    finally:
        dep.stop()
    return rows, deaths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", default=[], help="Run the inputs whose name contains one of these.")
    ap.add_argument("--skip", nargs="+", default=[], help="Leave out the inputs whose name contains these.")
    ap.add_argument("--max-tokens", type=int, default=4000, help="Per stream; cut after each input.")
    ap.add_argument("--timeout", type=float, default=60, help="Seconds to wait for each hostile answer.")
    ap.add_argument("--json", action="store_true", help="One JSON object on stdout instead of the table.")
    args = ap.parse_args()
    inputs = [
        h for h in INPUTS
        if (not args.only or any(o in h.name for o in args.only)) and not any(s in h.name for s in args.skip)
    ]  # fmt: skip
    if not args.json:
        print("8 streaming chats per input (mocker, speedup 1); gaps are theirs, around the input")
        print(f"{'input':<32} {'status':<40} {'refusal s':>9} {'gap ms':>10} {'baseline':>10}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows, deaths = asyncio.run(_bench(Path(tmp), inputs, args))
    if args.json:
        json.dump({"rows": rows, "deployments_replaced": deaths}, sys.stdout, indent=1)
        print()
    else:
        print(f"deployments replaced (died, or did not serve again within 20 s): {deaths}")


if __name__ == "__main__":
    main()
