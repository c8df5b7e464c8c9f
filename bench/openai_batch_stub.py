"""A loopback OpenAI Batch API that answers QA prompts at once, like a model would.

    python bench/openai_batch_stub.py --folder DIR [--port 0]

The paper-scale rehearsal (bench/paper_rehearsal.py) points the `openai` QA generator in batch
mode at it. It speaks the documented wire format that `in2.endpoint.batch` uses (file upload,
batch create and retrieve, file content download) and keeps files on disk, not in memory, so
28 input files of 50,000 requests cost it little. tests/openai_stub.py scripts faults for tests;
this one plays a model at volume instead. Per request, by a hash of its custom_id:

- most replies are a valid JSON QA pair grounded in the prompt's passage(s): the question names
  words of a sentence, the answer is the rest of it, the evidence a verbatim quote;
- `REJECT_SHARE` are replies the parser refuses (not JSON, output cut at max_tokens, a question
  that says "according to the passage", an integration pair that uses one passage);
- `failed_share` are failed requests and `expired_share` requests the window closed on: lines
  of the error file, as the Batch API writes them (a batch with expired requests is `expired`).

Tests (tests/test_qa_batch.py) run it in-process (`serve`) and script what a provider does to a
client: `hold_s` keeps batches `in_progress`, `create_hook` decides per `batches.create` whether
the batch is made and whether its reply is sent (a client killed or cut off mid-call),
`fail_next` answers the next calls of a route with HTTP 500, `validation_error` fails the next
batch. It counts what a bill would: batches created, and each request message sent in one.
`GET /v1/batches` pages newest first (`limit`, `after`, `has_more`, `last_id`), with `metadata`.

The first line on stdout is the base URL (`http://127.0.0.1:PORT/v1`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlparse

FAILED_SHARE = 0.005
REJECT_SHARE = 0.05
"""Shares of the requests answered by an error line and by a reply the parser refuses."""
ENDPOINT = "/v1/chat/completions"
_PASSAGE = re.compile(r"### Passages? [^\n]*###\n(.*?)\n\nWrite ONE question", re.DOTALL)
_NUMBERED = re.compile(r"(?:^|\n\n)\[\d+\] ")


def draw(custom_id: str) -> float:
    """A uniform draw in [0, 1) fixed by the request: the same run gives the same answers."""
    return int.from_bytes(hashlib.sha256(custom_id.encode()).digest()[:8], "big") / 2**64


def passages(prompt: str) -> list[str]:
    """The passage(s) a QA prompt of in2.qa.llm asks about, whitespace-normalised."""
    found = _PASSAGE.search(prompt)
    text = found.group(1) if found else prompt
    parts = _NUMBERED.split(text) if text.startswith("[1] ") else [text]
    return [" ".join(p.split()) for p in parts if p.strip()]


def _pair(text: str, u: float) -> tuple[str, str, str]:
    """(question, answer, evidence) about one passage: the longest sentence, split in two."""
    sentences = [s.split() for s in re.split(r"(?<=[.!?])\s+", text)]
    words = max(sentences, key=len) if sentences else text.split()
    if len(words) < 8:
        words = text.split()
    cut = max(3, min(len(words) - 3, int(len(words) * (0.3 + 0.3 * u))))
    head, tail = words[:cut], words[cut:]
    question = (
        f"What follows after {' '.join(head[-3:]).rstrip('.,;')} in the account of {head[0]}?"
    )
    return question, " ".join(tail), " ".join(words[max(0, cut - 3) : cut + 3])


def reply(prompt: str, u: float) -> tuple[str, str]:
    """(content, finish_reason) for a QA prompt; `u` in [FAILED_SHARE, 1) picks the behaviour."""
    texts = passages(prompt)
    integration = "segments_used" in prompt and len(texts) >= 2
    reject = (u - FAILED_SHARE) / REJECT_SHARE  # in [0, 1) for a reject
    if 0 <= reject < 0.3:
        return "Sure! Here is a question about the passage you gave me.", "stop"
    pairs = [_pair(t, u) for t in texts[: 2 if integration else 1]]
    question = pairs[0][0]
    answer = pairs[0][1]
    body: dict[str, Any] = {"question": question, "answer": answer, "evidence": pairs[0][2]}
    if integration:
        body["question"] = f"{question[:-1]}, and {pairs[1][0][0].lower()}{pairs[1][0][1:]}"
        body["answer"] = f"First, {answer}; then, {pairs[1][1]}"
        body["segments_used"] = [1] if 0.6 <= reject < 1 else [1, 2]
        body["evidence"] = [p[2] for p in pairs]
    elif 0.6 <= reject < 1:
        body["question"] = f"According to the passage, {question[0].lower()}{question[1:]}"
    content = json.dumps(body)
    if 0.3 <= reject < 0.6:
        return content[: len(content) // 2], "length"
    return content, "stop"


def completion(line: dict[str, Any], u: float) -> dict[str, Any]:
    """The chat completion a model would return for one batch input line."""
    prompt = line["body"]["messages"][-1]["content"]
    content, finish = reply(prompt, u)
    prompt_tokens = sum(len(m["content"]) for m in line["body"]["messages"]) // 4
    return {
        "id": f"chatcmpl-{line['custom_id'][:12]}",
        "object": "chat.completion",
        "created": 1711652795,
        "model": line["body"]["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(content) // 4,
            "total_tokens": prompt_tokens + len(content) // 4,
        },
    }


def message_key(body: dict[str, Any]) -> str:
    """A request as the server sees it (tests/openai_stub.py names it the same): its messages."""
    return hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()


def result_line(
    line: dict[str, Any], n: int, failed_share: float = FAILED_SHARE, expired_share: float = 0.0
) -> tuple[str | None, str]:
    """(the error code or None, the output / error file line) for one input line."""
    custom_id, u = line["custom_id"], draw(line["custom_id"])
    record: dict[str, Any] = {"id": f"batch_req_{n}", "custom_id": custom_id, "error": None}
    if failed_share <= u < failed_share + expired_share:
        message = "This request could not be executed before the completion window expired."
        record |= {"response": None, "error": {"code": "batch_expired", "message": message}}
        return "batch_expired", json.dumps(record)
    if u < failed_share:
        error = {"message": "The server had an error", "type": "server_error"}
        error["code"] = "server_error"
        record["response"] = {
            "status_code": 500,
            "request_id": f"req_{n}",
            "body": {"error": error},
        }
        return "server_error", json.dumps(record)
    body = completion(line, u)
    record["response"] = {"status_code": 200, "request_id": f"req_{n}", "body": body}
    return None, json.dumps(record)


Route = Literal[
    "files.create", "batches.create", "batches.retrieve", "batches.list", "files.content"
]
CreateAction = Literal["answer", "lost", "drop"]
"""What a `create_hook` makes of one `batches.create`: create the batch and answer; create it
and close the connection unanswered (a reply lost, a client killed); close without creating."""


class Store:
    """Files and batches on disk; a batch is run to completion when it is created."""

    def __init__(
        self, folder: Path, failed_share: float = FAILED_SHARE, expired_share: float = 0.0
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.batches: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.count = 0
        self.failed_share = failed_share
        self.expired_share = expired_share
        self.hold_s = 0.0
        """Seconds a batch stays `in_progress` after it is created."""
        self.create_hook: Callable[[dict[str, Any]], CreateAction] | None = None
        self.fail_next: Counter[Route] = Counter()
        """Calls of a route still to answer with HTTP 500."""
        self.validation_error: str | None = None
        """Fail the next batch at validation with this message (nothing run, nothing billed)."""
        self.created = 0
        """Batches created: what a bill counts."""
        self.sent: Counter[str] = Counter()
        """Requests put into created batches, per message key."""
        self.outcomes: Counter[str] = Counter()
        """Result lines written, per error code (`ok` for a 200)."""
        self.calls: Counter[Route] = Counter()
        self.url = ""

    def new_id(self, prefix: str) -> str:
        with self.lock:
            self.count += 1
            return f"{prefix}-{self.count:06d}"

    def path(self, file_id: str) -> Path:
        return self.folder / f"{file_id}.jsonl"

    def upload(self, content: bytes) -> dict[str, Any]:
        file_id = self.new_id("file")
        self.path(file_id).write_bytes(content)
        return {"id": file_id, "object": "file", "bytes": len(content), "created_at": 0} | {
            "filename": f"{file_id}.jsonl",
            "purpose": "batch",
        }

    def run(self, input_file_id: str, metadata: dict[str, str] | None = None) -> dict[str, Any]:
        batch_id = self.new_id("batch")
        out_id, err_id = f"{batch_id}-out", f"{batch_id}-err"
        batch: dict[str, Any] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": ENDPOINT,
            "input_file_id": input_file_id,
            "completion_window": "24h",
            "status": "completed",
            "created_at": int(time.time()),
            "output_file_id": out_id,
            "error_file_id": None,
            "errors": None,
            "metadata": metadata,
        }
        total = failed = expired = 0
        with self.lock:
            validation, self.validation_error = self.validation_error, None
        if validation is not None:
            error = {"code": "invalid_request", "line": 1, "message": validation, "param": None}
            batch |= {"status": "failed", "output_file_id": None}
            batch["errors"] = {"object": "list", "data": [error]}
        else:
            with (
                self.path(input_file_id).open() as f,
                self.path(out_id).open("w") as out,
                self.path(err_id).open("w") as err,
            ):
                for n, raw in enumerate(f):
                    if not raw.strip():
                        continue
                    line = json.loads(raw)
                    code, text = result_line(line, n, self.failed_share, self.expired_share)
                    (out if code is None else err).write(text + "\n")
                    total, failed = total + 1, failed + (code is not None)
                    expired += code == "batch_expired"
                    with self.lock:
                        self.sent[message_key(line["body"])] += 1
                        self.outcomes[code or "ok"] += 1
            self.path(input_file_id).unlink()
            batch["error_file_id"] = err_id if failed else None
            batch["status"] = "expired" if expired else "completed"
        batch["request_counts"] = {"total": total, "completed": total - failed, "failed": failed}
        with self.lock:
            self.created += 1
            self.batches[batch_id] = batch | {"done_at": time.monotonic() + self.hold_s}
        return batch

    def view(self, batch_id: str) -> dict[str, Any]:
        """A batch as `batches.retrieve` sees it now: `in_progress` while it is held."""
        batch = dict(self.batches[batch_id])
        if time.monotonic() < batch.pop("done_at"):
            counts = {"total": batch["request_counts"]["total"], "completed": 0, "failed": 0}
            batch |= {"status": "in_progress", "output_file_id": None, "error_file_id": None}
            batch["request_counts"] = counts
        return batch

    def page(self, query: str) -> dict[str, Any]:
        """`GET /v1/batches?limit=&after=`: newest first."""
        args = parse_qs(query)
        limit = min(100, int(args.get("limit", ["20"])[0]))
        ids = list(reversed(self.batches))
        if after := args.get("after", [None])[0]:
            ids = ids[ids.index(after) + 1 :]
        data = [self.view(i) for i in ids[:limit]]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return {"object": "list", "data": data, "first_id": first, "last_id": last} | {
            "has_more": len(ids) > limit
        }

    def failing(self, route: Route) -> bool:
        """Count a call of `route`; True if it is to be answered with HTTP 500."""
        with self.lock:
            self.calls[route] += 1
            if self.fail_next[route] > 0:
                self.fail_next[route] -= 1
                return True
        return False


def _file_part(raw: bytes, content_type: str) -> bytes:
    """The `file` part of a multipart/form-data upload."""
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    for part in raw.split(b"--" + boundary):
        head, _, body = part.partition(b"\r\n\r\n")
        if b'name="file"' in head:
            return body.removesuffix(b"\r\n")
    raise ValueError("no file part in the upload")


def _handler(store: Store) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, payload: Any) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _broken(self) -> None:
            self._send(500, {"error": {"message": "stub broke", "type": "server_error"}})

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/v1/files":
                if store.failing("files.create"):
                    return self._broken()
                content = _file_part(raw, self.headers["Content-Type"])
                return self._send(200, store.upload(content))
            if self.path == "/v1/batches":
                if store.failing("batches.create"):
                    return self._broken()
                body = json.loads(raw)
                action = store.create_hook(body) if store.create_hook else "answer"
                if action != "drop":
                    batch = store.run(body["input_file_id"], body.get("metadata"))
                if action != "answer":
                    self.close_connection = True
                    return None
                return self._send(200, batch)
            return self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_GET(self) -> None:
            url = urlparse(self.path)
            parts = url.path.strip("/").split("/")
            if parts == ["v1", "batches"]:
                return (
                    self._broken()
                    if store.failing("batches.list")
                    else self._send(200, store.page(url.query))
                )
            if parts[:2] == ["v1", "batches"] and parts[2] in store.batches:
                if store.failing("batches.retrieve"):
                    return self._broken()
                return self._send(200, store.view(parts[2]))
            if parts[:2] == ["v1", "files"] and parts[-1] == "content":
                path = store.path(parts[2])
                if path.is_file():
                    if store.failing("files.content"):
                        return self._broken()
                    return self._send(200, path.read_bytes())
            return self._send(404, {"error": {"message": f"no route {self.path}"}})

    return Handler


def _server(store: Store, port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(store))
    server.daemon_threads = True
    store.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    return server


@contextlib.contextmanager
def serve(folder: Path, **shares: float) -> Iterator[Store]:
    """The stub on a free loopback port, in a thread of this process; `store.url` is its URL."""
    store = Store(folder, **shares)
    server = _server(store)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield store
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", type=Path, required=True, help="where files and results live")
    p.add_argument("--port", type=int, default=0, help="0: a free port")
    p.add_argument("--failed-share", type=float, default=FAILED_SHARE, help="failed requests")
    p.add_argument("--expired-share", type=float, default=0.0, help="expired requests")
    args = p.parse_args()
    store = Store(args.folder, args.failed_share, args.expired_share)
    server = _server(store, args.port)
    print(store.url, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
