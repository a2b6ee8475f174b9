"""The Hub's failures, told apart: transient ones (5xx, 429, a dropped connection) are
retried, the others become one-line QuantkitErrors that say what to do."""

from __future__ import annotations

import contextlib
import logging
import time

from ..errors import HubAuthError, PublishError, QuantkitError

log = logging.getLogger(__name__)

UPLOAD_ATTEMPTS = 3  # whole-upload attempts; the client also retries each request
RETRY_WAIT_S = 2.0


def retrying(call):
    """Run `call`, again on a transient failure (a 5xx, 429 or a dropped connection) after
    the client's own per-request retries gave up. Re-running an upload sends only what the
    Hub does not have yet: the LFS batch answers "present" for objects already stored."""
    for attempt in range(1, UPLOAD_ATTEMPTS + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == UPLOAD_ATTEMPTS or not _transient(exc):
                raise
            log.warning(
                "transient Hub error (%s); attempt %d of %d",
                _describe(exc),
                attempt + 1,
                UPLOAD_ATTEMPTS,
            )
            time.sleep(RETRY_WAIT_S * attempt)
    raise AssertionError("unreachable")


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) if response is not None else None


def _transient(exc: BaseException) -> bool:
    import httpx

    for link in _chain(exc):
        if isinstance(link, httpx.TransportError | ConnectionError | TimeoutError):
            return True
        status = _status(link)
        if status is not None:
            return status >= 500 or status == 429
    return False


def _describe(exc: BaseException) -> str:
    for link in _chain(exc):
        status = _status(link)
        if status is not None:
            return f"HTTP {status}"
    return type(exc).__name__


@contextlib.contextmanager
def hub_errors(repo_id: str, *, stage: str):
    """Turn huggingface_hub's and httpx's exceptions into one-line QuantkitErrors."""
    try:
        yield
    except QuantkitError:
        raise
    except Exception as exc:
        raise _translate(exc, f"while {stage} for {repo_id}", repo_id) from exc


def _translate(exc: Exception, where: str, repo_id: str) -> QuantkitError:
    from huggingface_hub.errors import LocalTokenNotFoundError

    statuses = [s for s in (_status(link) for link in _chain(exc)) if s is not None]
    status = statuses[0] if statuses else None
    if isinstance(exc, LocalTokenNotFoundError):
        return HubAuthError("No Hugging Face token was found.", hint="Set HF_TOKEN.")
    if status == 401:
        return HubAuthError(
            f"The Hub rejected the token (401 Unauthorized) {where}.",
            hint="Check HF_TOKEN or run `hf auth login` again.",
        )
    if status == 403:
        return HubAuthError(
            f"The token may not write to {repo_id} (403 Forbidden) {where}.",
            hint="Use a token with write access to that namespace.",
        )
    if status == 404:
        return PublishError(f"The Hub answered 404 Not Found {where}.")
    if _transient(exc):
        return PublishError(
            f"The Hub connection failed {where} ({_describe(exc)}) after "
            f"{UPLOAD_ATTEMPTS} attempts.",
            hint="Run the same command again: files already on the Hub are not re-sent.",
        )
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return PublishError(f"The upload failed {where}: {detail}.")
