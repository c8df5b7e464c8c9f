"""A scriptable OpenAI-compatible endpoint on loopback, for the tests of the `openai` paths.

It is a real HTTP server (the client under test is not mocked); what it cannot be is a real
model that misbehaves on cue, so its replies and faults are scripted:

- `script`: the next requests' actions, in order: `("status", code[, headers])`, `("sleep", s)`
  (a slow answer), `("quota",)` (429 insufficient_quota), `("drip", s)` (the answer one byte
  every `s` seconds), `("huge", n)` (a 200 announcing n bytes), `("body", payload)` (a 200 with
  that JSON), `("refusal",)`, `("billed_timeout", s)` (billed, then slower than the client);
- `reject_formats`: `response_format` types answered with HTTP 400 naming them (an old server);
- `models`: what GET /v1/models lists;
- `fault_rate`: a share of requests failing with one of `FAULTS`, drawn from a hash of the
  request and its attempt number, so a run is the same whatever the thread timing;
- Batch API files and batches (upload, create, poll, download).

It counts what a bill would: every hit, and every 200 answer per request (`answered`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import select
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "500", "timeout", "malformed_json", "disconnect", "truncated", "not_json")
"""Transport faults (retried by the client: 429 with Retry-After, 500, a reply slower than the
client's timeout, a 200 whose body is cut JSON, a connection closed mid-body) and content faults
(a 200 the client keeps and rejects: output cut at max_tokens, a reply that is not JSON)."""
CONTENT_FAULTS = ("truncated", "not_json")


def _quote(prompt: str, marker: str) -> str:
    """The first four words after `marker` in a prompt: a verbatim evidence quote."""
    return " ".join(prompt.split(marker, 1)[1].split()[:4])


def good_reply(body: dict[str, Any]) -> str:
    """A valid QA reply for the prompt in `body`, with evidence quoted from the passages."""
    prompt = body["messages"][-1]["content"]
    if "segments_used" in prompt:
        evidence = [_quote(prompt, "[1] "), _quote(prompt, "[2] ")]
        reply = {"question": "Which two facts combine here?", "answer": "Both of them."}
        return json.dumps({**reply, "segments_used": [1, 2], "evidence": evidence})
    evidence = _quote(prompt, "### Passage ###")
    return json.dumps(
        {"question": "What is quoted first?", "answer": "Its opening words."}
        | {"evidence": evidence}
    )


def message_key(body: dict[str, Any]) -> str:
    """Identity of a request as the server sees it: the hash of its messages."""
    return hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()


class Stub:
    """State of the stub server: scripted misbehaviour, what it saw and answered, Batch API."""

    def __init__(self) -> None:
        self.script: deque[tuple[Any, ...]] = deque()
        self.fault_rate = 0.0
        self.fault_seed = 0
        self.timeout_sleep_s = 1.0
        self.answer_delay_s = 0.0
        self.chat_hits = 0
        self.hits: Counter[str] = Counter()
        """Requests received per message key (every attempt)."""
        self.answered: Counter[str] = Counter()
        """200 answers sent to a client still connected, per message key: what a bill counts."""
        self.abandoned = 0
        """Answers not sent because the client had hung up (was killed) while it waited."""
        self.hit_log: list[str] = []
        """Message keys in the order the requests arrived."""
        self.faults: Counter[str] = Counter()
        """Faults served, per kind."""
        self.authorization: set[str] = set()
        self.paths: list[str] = []
        self.reply = good_reply
        self.usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
        self.reject_formats: set[str] = set()
        self.formats: list[str | None] = []
        """The `response_format` type of each chat request (None: none sent)."""
        self.models: list[dict[str, Any]] = []
        self.uploads: list[list[dict[str, Any]]] = []
        self.polls = 0
        self.url = ""
        self.lock = threading.Lock()

    def completion(
        self, body: dict[str, Any], content: str | None = None, finish_reason: str = "stop"
    ) -> dict[str, Any]:
        return {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": 1711652795,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": self.reply(body) if content is None else content,
                    },
                    "finish_reason": finish_reason,
                }
            ],
            "usage": self.usage,
        }

    def draw_fault(self, key: str, attempt: int) -> str | None:
        """The fault of this attempt of this request, or None: a hash, not the thread timing."""
        digest = hashlib.sha256(f"{self.fault_seed}:{key}:{attempt}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        if u >= self.fault_rate:
            return None
        return FAULTS[int(u / self.fault_rate * len(FAULTS))]

    def batch(self, status: str) -> dict[str, Any]:
        n = len(self.uploads[-1])
        done = status == "completed"
        return {
            "id": "batch_abc123",
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "input_file_id": "file-in",
            "completion_window": "24h",
            "status": status,
            "created_at": 1711471533,
            "output_file_id": "file-out" if done else None,
            "error_file_id": "file-err" if done else None,
            "errors": None,
            "request_counts": {"total": n, "completed": n - 1 if done else 0, "failed": int(done)},
        }

    def batch_files(self) -> tuple[str, str]:
        """Output and error files of the last batch: the first request failed, others answered."""
        out, err = [], []
        for i, line in enumerate(self.uploads[-1]):
            if i == 0:
                error = {"message": "too long", "type": "invalid_request_error"}
                error["code"] = "context_length_exceeded"
                response = {"status_code": 400, "request_id": "req_e", "body": {"error": error}}
                err.append(
                    {"id": "batch_req_e", "custom_id": line["custom_id"]}
                    | {"response": response, "error": None}
                )
                continue
            response = {"status_code": 200, "request_id": f"req_{i}"}
            response["body"] = self.completion(line["body"])
            out.append(
                {"id": f"batch_req_{i}", "custom_id": line["custom_id"]}
                | {"response": response, "error": None}
            )
        return "\n".join(map(json.dumps, out)) + "\n", "\n".join(map(json.dumps, err)) + "\n"


def _handler(stub: Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _send(
            self,
            code: int,
            payload: Any,
            headers: dict[str, str] | None = None,
            cut: int | None = None,
        ) -> None:
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data[:cut])
            self.wfile.flush()

        def _client_gone(self) -> bool:
            """The client closed the connection while waiting (no pipelining: readable = EOF)."""
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            try:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True

        def _fault(self, fault: str, body: dict[str, Any]) -> None:
            if fault == "429":
                error = {"error": {"message": "stub says slow down", "type": "rate_limit"}}
                return self._send(429, error, {"Retry-After": "1"})
            if fault == "500":
                return self._send(500, {"error": {"message": "stub broke", "type": "server"}})
            if fault == "timeout":
                time.sleep(stub.timeout_sleep_s)
                with contextlib.suppress(OSError):  # the client has hung up
                    self._send(200, stub.completion(body))
                return None
            if fault == "malformed_json":
                data = json.dumps(stub.completion(body))
                return self._send(200, data[: len(data) // 2])  # a complete body of cut JSON
            if fault == "disconnect":  # Content-Length promises more than is sent
                self.close_connection = True
                return self._send(200, stub.completion(body), cut=40)
            if fault == "truncated":  # stopped by max_tokens half-way through the JSON
                reply = stub.reply(body)
                self._send(200, stub.completion(body, reply[: len(reply) // 2], "length"))
            else:
                self._send(200, stub.completion(body, "Sure! Here is a question about it."))
            with stub.lock:
                stub.answered[message_key(body)] += 1
            return None

        def _scripted(self, action: tuple[Any, ...], body: dict[str, Any], key: str) -> None:
            kind = action[0]
            if kind == "quota":
                error = {"message": "You exceeded your current quota, please check your plan."}
                error |= {"type": "insufficient_quota", "code": "insufficient_quota"}
                return self._send(429, {"error": error})
            if kind == "body":
                return self._send(200, action[1])
            if kind == "huge":  # headers only: a client with a cap hangs up before the body
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(action[1]))
                self.end_headers()
                self.close_connection = True
                return None
            if kind == "drip":
                data = json.dumps(stub.completion(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    for i in range(len(data)):
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                        time.sleep(action[1])
                return None
            if kind == "refusal":
                reply = stub.completion(body, content="")
                message = reply["choices"][0]["message"]
                message |= {"content": None, "refusal": "I can't help with that."}
                self._send(200, reply)
            elif kind == "billed_timeout":  # a real server bills what it generated, sent or not
                with stub.lock:
                    stub.answered[key] += 1
                time.sleep(action[1])
                with contextlib.suppress(OSError):
                    self._send(200, stub.completion(body))
                return None
            with stub.lock:
                stub.answered[key] += 1
            return None

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            stub.paths.append(self.path)
            stub.authorization.add(self.headers.get("Authorization", ""))
            if self.path == "/v1/files":
                parts = raw.replace(b"\r\n", b"\n").split(b"\n")
                lines = [json.loads(x) for x in parts if x.startswith(b'{"custom_id"')]
                stub.uploads.append(lines)
                file = {"id": "file-in", "object": "file", "bytes": len(raw), "created_at": 0}
                return self._send(200, file | {"filename": "in.jsonl", "purpose": "batch"})
            if self.path == "/v1/batches":
                return self._send(200, stub.batch("validating"))
            body = json.loads(raw)
            key = message_key(body)
            with stub.lock:
                stub.chat_hits += 1
                attempt = stub.hits[key]
                stub.hits[key] += 1
                stub.hit_log.append(key)
                action = stub.script.popleft() if stub.script else ("ok",)
                fault = stub.draw_fault(key, attempt) if action == ("ok",) else None
                if fault:
                    stub.faults[fault] += 1
            if fault:
                return self._fault(fault, body)
            shape = (body.get("response_format") or {}).get("type")
            stub.formats.append(shape)
            if shape in stub.reject_formats:
                error = {"message": f"response_format {shape} is not supported", "type": "stub"}
                return self._send(400, {"error": error | {"param": "response_format"}})
            if action[0] == "status":
                error = {"error": {"message": f"stub says {action[1]}", "type": "stub"}}
                return self._send(action[1], error, action[2] if len(action) > 2 else None)
            if action[0] != "sleep" and action[0] != "ok":
                return self._scripted(action, body, key)
            if action[0] == "sleep":
                time.sleep(action[1])
            time.sleep(stub.answer_delay_s)
            if self._client_gone():
                with stub.lock:
                    stub.abandoned += 1
                return None
            try:
                self._send(200, stub.completion(body))
            except OSError:  # a client that timed out, or was killed, has hung up
                return None
            with stub.lock:
                stub.answered[key] += 1
            return None

        def do_GET(self) -> None:
            stub.paths.append(self.path)
            if self.path == "/v1/models":
                return self._send(200, {"object": "list", "data": stub.models})
            if self.path == "/v1/batches/batch_abc123":
                stub.polls += 1
                return self._send(200, stub.batch("in_progress" if stub.polls < 2 else "completed"))
            out, err = stub.batch_files()
            files = {"/v1/files/file-out/content": out, "/v1/files/file-err/content": err}
            return self._send(200, files[self.path])

    return Handler


@contextlib.contextmanager
def serve_stub() -> Iterator[Stub]:
    """A stub endpoint on a free loopback port; `stub.url` is its /v1 base URL."""
    state = Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
