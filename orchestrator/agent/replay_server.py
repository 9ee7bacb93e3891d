"""A scripted OpenAI-compatible chat server on 127.0.0.1: serves recorded responses in order.

Replay mode (a recorded journal.jsonl or an idea's playbook) and the tests both point litellm at
this server, so a replayed run goes through exactly the same aider + litellm path as a live one.
Every request is recorded. Once the responses run out it answers END_MARKER, which the loop
reads as "the agent is done", and `exhausted` tells the loop the script ran out. A test can put a
Fault in the script instead of a reply: an HTTP error in OpenAI's shape (401, 429 with
Retry-After, 500, a context-length 400) or a hang past the client's timeout.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

END_MARKER = "ALL_COMPLETED"


@dataclass(frozen=True)
class Fault:
    """A scripted failure served in place of a reply: `status` with an OpenAI-style error
    body and `headers`, after `hang` seconds of silence (a hang closes without answering)."""

    status: int = 500
    message: str = "scripted server error"
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0


CONTEXT_LENGTH = Fault(  # the words litellm maps to ContextWindowExceededError
    400,
    "This model's maximum context length is 1000 tokens. However, your messages resulted in "
    "5000 tokens. Please reduce the length of the messages.",
    code="context_length_exceeded",
)


class ReplayServer:
    """Serve `responses` one per chat-completion request; use as a context manager."""

    def __init__(self, responses: Iterable[str | Fault], model: str = "replay") -> None:
        self.responses = list(responses)
        self.model = model
        self.requests: list[dict[str, Any]] = []  # the JSON bodies received, in order
        self.keys: list[str | None] = []  # the Authorization header of each, in order
        self.served = 0
        self.exhausted = False
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The base URL litellm needs as api_base (OpenAI style, ending in /v1)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> ReplayServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def next_response(self, body: dict[str, Any], key: str | None = None) -> str | Fault:
        with self._lock:
            self.requests.append(body)
            self.keys.append(key)
            if self.served < len(self.responses):
                self.served += 1
                return self.responses[self.served - 1]
            if not self.exhausted:
                log.info("replay script exhausted after %d responses", self.served)
            self.exhausted = True
            return END_MARKER


def _handler_for(server: ReplayServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._send_json(404, {"error": {"message": f"unknown path {self.path}"}})
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                self._send_json(400, {"error": {"message": "request body is not JSON"}})
                return
            text = server.next_response(body, self.headers.get("Authorization"))
            if isinstance(text, Fault):
                self._send_fault(text)
            elif body.get("stream"):
                self._send_stream(text, body)
            else:
                self._send_json(200, _completion(text, body, server.model))

        def do_GET(self) -> None:  # noqa: N802
            # Some clients probe the model list before chatting.
            if self.path.rstrip("/").endswith("/models"):
                self._send_json(200, {"object": "list", "data": [{"id": server.model}]})
            else:
                self._send_json(404, {"error": {"message": f"unknown path {self.path}"}})

        def _send_json(
            self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _send_fault(self, fault: Fault) -> None:
            time.sleep(fault.hang)
            if fault.hang:
                self.close_connection = True  # the client gave up long ago; answer nothing
                return
            error = {"message": fault.message, "type": "scripted", "code": fault.code}
            self._send_json(fault.status, {"error": error}, fault.headers)

        def _send_stream(self, text: str, body: dict[str, Any]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            base = _completion(text, body, server.model)
            chunks = [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": text},
                    "finish_reason": None,
                },
                {"index": 0, "delta": {}, "finish_reason": "stop"},
            ]
            for choice in chunks:
                event = {**base, "object": "chat.completion.chunk", "choices": [choice]}
                if choice["finish_reason"]:
                    event["usage"] = base["usage"]
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("replay server: " + format, *args)

    return Handler


def _completion(text: str, body: dict[str, Any], model: str) -> dict[str, Any]:
    # Rough token counts (4 characters a token) so the journal's token columns are not empty.
    prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
    prompt_tokens, completion_tokens = prompt_chars // 4, len(text) // 4
    return {
        "id": f"replay-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
