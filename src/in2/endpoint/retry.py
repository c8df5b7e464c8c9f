"""When to try an endpoint call again: the openai SDK's retry rules, plus ours, for every call.

The SDK's own retries are off (`max_retries=0`): they are neither counted nor interruptible.
Here, as the SDK does, 408, 409, 429, >= 500, timeouts and connection errors are retried and
`x-should-retry: true/false` overrides the status rule; besides, a 200 that is not a usable reply
(`Malformed`: cut or non-JSON body, `{"error": ...}`, `{}`) and a body over `max_response_mb` are
retried, and a 429 saying `insufficient_quota` stops at once (waiting does not refill an
account). The delay is the server's (`retry-after-ms`, `retry-after` in seconds or as an HTTP
date; at most `RETRY_AFTER_MAX_S`), else exponential backoff with jitter; it waits on `stop`, so
a Ctrl-C ends it at once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import openai

from in2.endpoint.transport import ResponseTooLarge
from in2.params import InputError, OpenAIEndpointParams

log = logging.getLogger(__name__)

T = TypeVar("T")

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
RETRY_AFTER_MAX_S = 600.0
RETRIED_STATUSES = (408, 409, 429)
"""Besides >= 500: request timeout, lock conflict, rate limit (the SDK's list)."""
QUOTA_CODE = "insufficient_quota"


class EndpointError(InputError):
    """The endpoint cannot serve the requests (unreachable, refused, or kept failing)."""


class Malformed(Exception):
    """A 200 that is not a usable reply (a server fault): retried, never cached."""

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(detail)
        self.cause = cause
        """The retry cause it is counted under: malformed, error_body, no_choices."""


class Cancelled(Exception):
    """`stop` was set (Ctrl-C) while a retry waited: the call was given up, not failed."""


def retry_after_s(headers: Any) -> float | None:
    """Seconds asked for by `retry-after-ms` / `Retry-After` (seconds or an HTTP date)."""
    if ms := headers.get("retry-after-ms"):
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _endpoint(params: OpenAIEndpointParams, url: str) -> str:
    return f"the {params.purpose} endpoint {url}"


def status_error(
    err: openai.APIStatusError, url: str, params: OpenAIEndpointParams, why: str = ""
) -> EndpointError:
    """The one-line message of a status that is not retried (`why`: what made it final)."""
    code, section, name = err.status_code, params.section, _endpoint(params, url)
    if code in (401, 403):  # the server's message may quote part of the key: leave it out
        hint = f"set the environment variable {params.api_key_env} to a valid key for it"
        return EndpointError(f"{name} refused the API key (HTTP {code}): {hint}")
    if code == 404:
        hint = f"check {section}.model ({params.model!r}) and {section}.base_url (usually …/v1)"
    else:
        hint = f"check {section}.model ({params.model!r}) and the sampling params"
    return EndpointError(f"{name} answered HTTP {code} ({err.message}){why}: {hint}")


def _out_of_quota(err: openai.APIStatusError) -> bool:
    return err.status_code == 429 and QUOTA_CODE in (err.code, err.type)


def _status_cause(err: openai.APIStatusError, url: str, params: OpenAIEndpointParams) -> str:
    """The retry cause of a status error; raises the final error when it is not retried."""
    code = err.status_code
    if _out_of_quota(err):
        raise EndpointError(
            f"{_endpoint(params, url)} says the account is out of quota (HTTP 429 "
            f"{QUOTA_CODE}): add credit or raise the limit in the provider's billing settings, "
            "then re-run (responses received so far are cached); waiting will not help"
        )
    should = err.response.headers.get("x-should-retry")
    if should == "false":
        raise status_error(err, url, params, ", and x-should-retry: false")
    if should != "true" and code not in RETRIED_STATUSES and code < 500:
        raise status_error(err, url, params)
    return "5xx" if code >= 500 else str(code)


def _exhausted(
    cause: str, attempts: int, url: str, params: OpenAIEndpointParams, what: str
) -> EndpointError:
    section, name = params.section, _endpoint(params, url)
    on = "" if what == "request" else f" on {what}"
    if cause == "connection":
        return EndpointError(
            f"cannot reach {name}{on} (after {attempts} attempt(s)): start the server "
            "(e.g. `transformers serve FOLDER --port N` or vLLM) or fix "
            f"{section}.base_url / OPENAI_BASE_URL; responses received so far are cached "
            "and a re-run resumes from them"
        )
    return EndpointError(
        f"{name} kept failing{on} ({cause}, {attempts} attempt(s)); responses received so far "
        f"are cached and a re-run resumes from them; raise {section}.max_retries or "
        f"{section}.timeout_s, or lower {section}.concurrency"
    )


def backoff_s(attempt: int, asked: float | None) -> float:
    """The wait before retry `attempt + 1`: the server's, capped, else backoff with jitter."""
    if asked is not None:
        return min(asked, RETRY_AFTER_MAX_S)
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt) * random.uniform(0.5, 1.0)


def with_retries(
    call: Callable[[], T],
    params: OpenAIEndpointParams,
    url: str,
    *,
    what: str = "request",
    stop: threading.Event | None = None,
    on_retry: Callable[[str, float], None] | None = None,
) -> T:
    """`call()` (one SDK call), retried as the module says at most `params.max_retries` times.

    `on_retry(cause, delay)` is called before each wait; raises `EndpointError` when the call
    fails for good and `Cancelled` when `stop` is set during a wait.
    """
    attempt = 0
    while True:
        asked: float | None = None
        try:
            return call()
        except Malformed as err:
            cause, detail = err.cause, str(err)
        except openai.APIStatusError as err:
            cause, detail = _status_cause(err, url, params), err.message
            asked = retry_after_s(err.response.headers)
        except openai.APIResponseValidationError as err:
            cause, detail = "malformed", err.message
        except openai.APITimeoutError:
            cause, detail = "timeout", f"no complete reply within {params.timeout_s:g} s"
        except openai.APIConnectionError as err:
            too_large = isinstance(err.__cause__, ResponseTooLarge)
            cause = "too_large" if too_large else "connection"
            detail = str(err.__cause__ or err)
        if attempt == params.max_retries:
            raise _exhausted(cause, attempt + 1, url, params, what) from None
        delay = backoff_s(attempt, asked)
        log.warning(
            "%s: %s to %s failed (%s: %s), retry %d in %.1f s",
            params.section,
            what,
            url,
            cause,
            detail[:120],
            attempt + 1,
            delay,
        )
        if on_retry is not None:
            on_retry(cause, delay)
        if stop is None:
            time.sleep(delay)
        elif stop.wait(delay):
            raise Cancelled(what)
        attempt += 1
