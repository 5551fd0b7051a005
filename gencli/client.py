"""`generate --server URL`: the same run, on a running `gencli serve`.

Standard library only (no torch, no transformers, no HTTP package): start-up stays that of the
CLI itself, a fraction of a second.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from gencli.errors import GencliError


def generate_remote(
    server: str, payload: dict[str, Any], api_key: str | None, on_text: Callable[[str], None] | None
) -> dict[str, Any]:
    """POST `payload` to SERVER/v1/generate, streaming: text goes to `on_text` as it comes, and the
    record (as `generate --json` prints it) is returned. GencliError for an unreachable server or
    a refused request, with the server's own message."""
    url = server.rstrip("/").removesuffix("/v1") + "/v1/generate"
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = json.dumps({**payload, "stream": True}).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as refusal:
        raise GencliError(f"the server refused the request: {_message(refusal)}") from None
    except (urllib.error.URLError, OSError, ValueError) as problem:
        reason = getattr(problem, "reason", problem)
        raise GencliError(
            f"cannot reach a gencli server at {server} ({reason}); start one with 'gencli serve', "
            "or check --server / GENCLI_SERVER"
        ) from None
    with response:
        for raw in response:
            line = raw.decode("utf-8").rstrip("\n")
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line.removeprefix("data: "))
            if "text" in event and on_text is not None:
                on_text(event["text"])
            elif "result" in event:
                return event["result"]
            elif "error" in event:
                raise GencliError(f"the server failed the request: {event['error'].get('message')}")
    raise GencliError(f"the server at {server} closed the stream before the result; see its log")


def _message(refusal: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(refusal.read())["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {refusal.code} {refusal.reason}"
