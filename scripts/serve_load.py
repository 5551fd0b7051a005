"""Load on `gencli serve`, as the closing notes of the serve work measured it.

    python scripts/serve_load.py throughput MODEL [SERVE FLAGS...]   # 1 client vs 8, aggregate tokens/s
    python scripts/serve_load.py storm [SERVE FLAGS...]              # 40 clients x 3 requests, demo model

Each starts `gencli serve` on a free port with the flags given (none: the defaults), runs the load
and stops it. Run it on an otherwise idle machine: two CPU-heavy jobs on the same cores ruin both.
"""

from __future__ import annotations

import collections
import json
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx


def start(model: str, flags: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "gencli", "serve", "-m", model, "--port", str(port), "-q", *flags]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(base + "/health")
            return server, base
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("gencli serve did not start")


def throughput(model: str, flags: list[str]) -> dict:
    """16 requests of 32 tokens (ignore_eos) from 1 client, then from 8 at once; 3 alternating
    rounds after a warm-up; aggregate completion tokens per second."""
    server, base = start(model, flags)

    def ask(number: int) -> int:
        body = {"prompt": f"Request {number}: it is a truth universally acknowledged that", "max_tokens": 32}
        answer = httpx.post(base + "/v1/completions", json={**body, "ignore_eos": True}, timeout=600)
        return answer.json()["usage"]["completion_tokens"]

    def run(clients: int, requests: int = 16) -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            tokens = sum(pool.map(ask, range(requests)))
        return tokens / (time.perf_counter() - started)

    try:
        run(8, 8)  # the engine, and the packed weights a batch reads
        rounds: dict[int, list[float]] = {1: [], 8: []}
        for _ in range(3):
            for clients in rounds:
                rounds[clients].append(round(run(clients), 1))
    finally:
        server.terminate()
        server.wait()
    ratio = statistics.median(rounds[8]) / statistics.median(rounds[1])
    return {
        "model": model,
        "flags": flags,
        "1 client": rounds[1],
        "8 clients": rounds[8],
        "ratio": round(ratio, 2),
    }


def storm(flags: list[str]) -> dict:
    """40 clients at once, each a completion, a streamed chat and a streamed response of 32 tokens."""
    server, base = start("demo", flags)

    def events(response: httpx.Response) -> list[dict]:
        return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]

    def session(number: int) -> list[tuple[int, bool]]:
        answers = []
        with httpx.Client(base_url=base, timeout=600) as http:
            reply = http.post("/v1/completions", json={"prompt": f"Letter {number}:", "max_tokens": 32})
            answers.append((reply.status_code, reply.status_code == 200))
            chat = {"messages": [{"role": "user", "content": f"Question {number}?"}], "max_tokens": 32}
            with http.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as streamed:
                whole = streamed.status_code == 200 and events(streamed)[-1]["choices"][0]["finish_reason"]
                answers.append((streamed.status_code, bool(whole)))
            asked = {"input": f"Answer {number}.", "max_output_tokens": 32, "stream": True}
            with http.stream("POST", "/v1/responses", json=asked) as streamed:
                whole = streamed.status_code == 200 and events(streamed)[-1]["type"] == "response.completed"
                answers.append((streamed.status_code, bool(whole)))
        return answers

    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(40) as pool:
            answers = [answer for answers in pool.map(session, range(40)) for answer in answers]
    finally:
        server.terminate()
        server.wait()
    return {
        "flags": flags,
        "statuses": dict(collections.Counter(status for status, _ in answers)),
        "complete": sum(whole for _, whole in answers),
        "of": len(answers),
        "seconds": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["throughput"] and len(sys.argv) > 2:
        print(json.dumps(throughput(sys.argv[2], sys.argv[3:])))
    elif sys.argv[1:2] == ["storm"]:
        print(json.dumps(storm(sys.argv[2:])))
    else:
        raise SystemExit(__doc__)
