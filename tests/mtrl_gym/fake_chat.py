"""A local HTTP server speaking the OpenAI chat-completions shape, for model-user tests."""

import contextlib
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

# Maps a request body to (HTTP status, JSON payload or raw bytes).
Respond = Callable[[dict[str, Any]], tuple[int, Any]]


@dataclass
class FakeChat:
    """The running server: its ``/v1`` root, the requests it got, and how it answers."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    respond: Respond = lambda body: (200, completion("ok"))


def completion(content: str) -> dict[str, Any]:
    """A chat-completions reply carrying ``content`` (with the fields real servers add)."""
    return {
        "id": "chatcmpl-random",
        "object": "chat.completion",
        "created": 1,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
    }


@contextlib.contextmanager
def fake_chat_server() -> Iterator[FakeChat]:
    """Serves ``POST /v1/chat/completions`` on a free local port until the block ends."""
    chat = FakeChat(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            chat.requests.append(
                {"path": self.path, "auth": self.headers.get("Authorization"), **body}
            )
            code, payload = chat.respond(body)
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass  # keep test output clean

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    chat.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield chat
    finally:
        server.shutdown()
        server.server_close()
