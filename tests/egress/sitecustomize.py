"""Records where every Python process of a test run tries to connect (the e2e egress test).

Put on PYTHONPATH with IN2_EGRESS_LOG naming a file, it is imported at start-up by every Python
process that inherits the environment (DVC, each stage, MLflow, GX) and appends one line per
process start, socket connect and name lookup, through an audit hook (PEP 578): the same events
any library's network call goes through, whatever the library.
"""

import json
import os
import sys

_LOG = os.environ.get("IN2_EGRESS_LOG")


def _write(event: str, detail: object) -> None:
    with open(_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps({"pid": os.getpid(), "event": event, "detail": repr(detail)}) + "\n")


def _hook(event: str, args: tuple) -> None:
    if event == "socket.connect":
        sock, address = args
        _write(event, (int(sock.family), address))
    elif event == "socket.getaddrinfo":
        _write(event, args[0])


if _LOG:
    _write("start", sys.argv[:2])
    sys.addaudithook(_hook)
