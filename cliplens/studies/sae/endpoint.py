"""Asking a vision-language model to describe a feature's collage through any OpenAI-compatible
chat-completions endpoint (the ``openai`` client), with bounded concurrency and a journal.

The config names the endpoint's ``base_url``, ``model`` and the *name* of the environment
variable that holds the key (``key_env``); the key is read here, from the environment, and
goes only into the client's Authorization header: never into a file, a log line, an error
message or the job's parameters (every error text that leaves this module is redacted).

Retries are the client's own: exponential backoff with jitter on connection errors, timeouts,
408, 409, 429 and 5xx, honouring ``Retry-After`` (``retries`` tries after the first).  An answer
that is not an OpenAI chat completion with a text message (no choices, empty content, HTML, a
truncated body) is an :class:`AnswerError`; its row is not written and the next run asks again.
An answer cut at ``max_tokens`` is kept with ``finish_reason: "length"`` (flagged ``cut``).
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

from ...core.config import ConfigError
from .journal import Journal

log = logging.getLogger("cliplens")


class EndpointError(RuntimeError):
    """The endpoint cannot be used (unreachable, the key refused, the model unknown)."""


class AnswerError(RuntimeError):
    """An answer that is not an OpenAI chat completion carrying text."""


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    model: str
    key_env: str
    concurrency: int = 4
    timeout: float = 60.0
    retries: int = 5
    max_tokens: int = 80

    @property
    def name(self) -> str:
        """The interpreter's name in every output: the base URL without user, query or
        fragment (which could carry credentials), and the model."""
        u = urlsplit(self.base_url)
        host = u.hostname or ""
        netloc = f"{host}:{u.port}" if u.port else host
        return f"{urlunsplit((u.scheme, netloc, u.path, '', ''))}#{self.model}"


def api_key(key_env: str) -> str:
    """The key in environment variable ``key_env``; a ConfigError naming the variable (never a
    value) when it is unset or empty."""
    value = os.environ.get(key_env, "")
    if not value.strip():
        raise ConfigError(f"sae.interpret.endpoint.key_env: the environment variable {key_env} "
                          f"that should hold the endpoint's API key is not set (export it "
                          f"before running snakemake; the key is never written to the config)")
    return value


def redact(text: str, secret: str) -> str:
    """``text`` with every occurrence of ``secret`` replaced by ``***``."""
    return text.replace(secret, "***") if secret else text


def png_data_url(png: bytes) -> str:
    """A PNG as a ``data:image/png;base64,...`` URL."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class Answer(str):
    """An answer's text, with the completion's ``finish_reason`` (``"length"``: cut at
    ``max_tokens``)."""

    finish_reason: str | None = None


def answer_text(response: Any) -> str:
    """The text of the first choice of a chat completion; :class:`AnswerError` otherwise."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list):
        raise AnswerError(f"not a chat completion (got {type(response).__name__}: "
                          f"{str(response)[:120]!r})")
    if not choices:
        raise AnswerError("the completion has no choices")
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if isinstance(content, list):  # content parts
        content = " ".join(str((p.get("text") if isinstance(p, dict) else getattr(p, "text", None))
                               or "") for p in content)
    if not isinstance(content, str) or not content.strip():
        raise AnswerError("the completion's message has no text")
    return content.strip()


class Asker:
    """One client for ``endpoint``: :meth:`__call__` asks one prompt about one PNG."""

    def __init__(self, endpoint: Endpoint):
        import openai

        self.endpoint = endpoint
        self._key = api_key(endpoint.key_env)
        self.client = openai.OpenAI(base_url=endpoint.base_url, api_key=self._key,
                                    max_retries=endpoint.retries, timeout=endpoint.timeout)

    def __call__(self, prompt: str, png: bytes) -> str:
        import openai

        content = [{"type": "text", "text": prompt},
                   {"type": "image_url", "image_url": {"url": png_data_url(png)}}]
        try:
            response = self.client.chat.completions.create(
                model=self.endpoint.model, max_tokens=self.endpoint.max_tokens,
                messages=[{"role": "user", "content": content}])
        except (openai.AuthenticationError, openai.PermissionDeniedError,
                openai.NotFoundError) as e:
            raise EndpointError(self._say(f"{self.endpoint.name} refused the request: {e}")
                                ) from None
        except openai.APITimeoutError as e:
            raise AnswerError(self._say(f"timed out after {self.endpoint.retries} retries: {e}")
                              ) from None
        except openai.APIConnectionError as e:
            raise EndpointError(self._say(f"{self.endpoint.name} is unreachable after "
                                          f"{self.endpoint.retries} retries: {e}")) from None
        except openai.APIStatusError as e:
            raise AnswerError(self._say(f"HTTP {e.status_code} after retries: {e}")) from None
        except (openai.OpenAIError, ValueError) as e:  # a body that is not the JSON promised
            raise AnswerError(self._say(f"not an OpenAI answer: {type(e).__name__}: {e}")
                              ) from None
        try:
            answer = Answer(answer_text(response))
        except AnswerError as e:
            raise AnswerError(self._say(str(e))) from None
        answer.finish_reason = getattr(response.choices[0], "finish_reason", None)
        return answer

    def _say(self, text: str) -> str:
        return redact(text, self._key)


def ask_all(requests: Iterable[Mapping[str, Any]], ask: Callable[[Mapping[str, Any]], str],
            journal: Journal, concurrency: int, progress: bool = True) -> dict[str, int]:
    """Ask ``ask(request)`` for every request the journal lacks, at most ``concurrency`` at a
    time, appending each answer (the request plus ``text``) as it arrives.  An
    :class:`AnswerError` is logged and its request left for the next run; an
    :class:`EndpointError` stops asking (what is in flight still lands) and is raised.  Returns
    counts: ``asked``, ``written``, ``failed``."""
    from tqdm.auto import tqdm

    todo = journal.missing(requests)
    counts = {"asked": len(todo), "written": 0, "failed": 0}
    stop = threading.Event()
    fatal: list[BaseException] = []
    bar = tqdm(total=len(todo), desc="interpret", unit="ask", disable=not progress)

    def one(req):
        if stop.is_set():
            return None
        answer = ask(req)
        row = {**req, "text": str(answer)}
        if getattr(answer, "finish_reason", None):
            row["finish_reason"] = answer.finish_reason
        return row

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        pending: dict = {}  # future -> its request
        queue = iter(todo)
        while True:
            while not stop.is_set() and len(pending) < max(1, concurrency):
                req = next(queue, None)
                if req is None:
                    break
                pending[pool.submit(one, req)] = req
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                req = pending.pop(fut)
                bar.update(1)
                try:
                    row = fut.result()
                except AnswerError as e:
                    counts["failed"] += 1
                    log.warning("feature %s (%s): %s; asked again on the next run",
                                req["feature"], req["language"], e)
                    continue
                except EndpointError as e:
                    stop.set()
                    fatal.append(e)
                    continue
                except Exception as e:  # any other failure of one request: logged, asked again
                    counts["failed"] += 1
                    log.warning("feature %s (%s): %s: %s; asked again on the next run",
                                req["feature"], req["language"], type(e).__name__, e)
                    continue
                if row is not None and journal.append(row):
                    counts["written"] += 1
    bar.close()
    if fatal:
        raise fatal[0]
    return counts
