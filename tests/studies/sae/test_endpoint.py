"""The interpretation client against a loopback server that misbehaves on purpose (started and
stopped by each test): retries, Retry-After, bad answers, the journal, the key kept secret."""

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cliplens.core.config import ConfigError
from cliplens.studies.sae.endpoint import (AnswerError, Asker, Endpoint, EndpointError, ask_all,
                                           answer_text)
from cliplens.studies.sae.journal import Journal

KEY = "sk-test-7f3a9c1e-never-write-me"


def completion(text):
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": "vlm",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}]}


class Server:
    """A chat-completions endpoint on 127.0.0.1 that plays ``script`` (one behaviour per
    request, then 'ok'): ok, 429 (Retry-After 1), 500, 500-echo (the Authorization header in
    the body), slow (sleeps past the client's timeout), truncated, not-completion,
    no-choices, html."""

    def __init__(self, script=()):
        self.script = list(script)
        self.seen = []  # (time, behaviour, headers, body)
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    what = outer.script.pop(0) if outer.script else "ok"
                    outer.seen.append((time.monotonic(), what, self.headers, body))
                prompt = body["messages"][0]["content"][0]["text"]
                if what == "ok":
                    return self.send(200, json.dumps(completion(f"answer to {prompt}")))
                if what == "429":
                    return self.send(429, '{"error": {"message": "slow down"}}',
                                     {"Retry-After": "1"})
                if what == "500":
                    return self.send(500, '{"error": {"message": "oops"}}')
                if what == "500-echo":
                    return self.send(500, json.dumps({"error": {
                        "message": f"bad auth {self.headers['Authorization']}"}}))
                if what == "slow":
                    time.sleep(1.5)
                    return self.send(200, json.dumps(completion("late")))
                if what == "truncated":
                    return self.send(200, json.dumps(completion("cut"))[:40])
                if what == "not-completion":
                    return self.send(200, '{"hello": "world"}')
                if what == "no-choices":
                    return self.send(200, json.dumps({**completion("x"), "choices": []}))
                if what == "cut":
                    body = completion("a red cir")
                    body["choices"][0]["finish_reason"] = "length"
                    return self.send(200, json.dumps(body))
                if what == "html":
                    return self.send(200, "<html><body>Welcome</body></html>", {},
                                     "text/html")
                raise AssertionError(what)

            def send(self, code, text, headers=(), ctype="application/json"):
                data = text.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in dict(headers).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def requests(n, language="en"):
    return [{"feature": j, "language": language, "prompt": f"describe {j}",
             "prompt_hash": "h", "model": "vlm", "interpreter": "endpoint"} for j in range(n)]


def asker(url, monkeypatch, **kw):
    monkeypatch.setenv("CLIPLENS_TEST_KEY", KEY)
    settings = {"retries": 2, "timeout": 5.0, "concurrency": 2, **kw}
    a = Asker(Endpoint(base_url=url, model="vlm", key_env="CLIPLENS_TEST_KEY", **settings))
    return a, (lambda req: a(req["prompt"], b"\x89PNG fake"))


def test_retries_honour_retry_after_and_rows_land_once(tmp_path, monkeypatch, caplog):
    with Server(["429", "500"]) as srv:
        a, ask = asker(srv.url, monkeypatch, concurrency=1)
        with Journal(tmp_path / "j.jsonl") as journal:
            counts = ask_all(requests(2), ask, journal, concurrency=1, progress=False)
        assert counts == {"asked": 2, "written": 2, "failed": 0}
        times = [t for t, *_ in srv.seen]
        assert [w for _, w, *_ in srv.seen] == ["429", "500", "ok", "ok"]  # one request, 2 retries
        assert times[1] - times[0] >= 0.9  # waited as Retry-After said
        headers, body = srv.seen[0][2], srv.seen[0][3]
        assert headers["Authorization"] == f"Bearer {KEY}"
        image = body["messages"][0]["content"][1]["image_url"]["url"]
        assert image.startswith("data:image/png;base64,")
        assert body["model"] == "vlm" and body["max_tokens"] == 80
        # a rerun asks nothing and writes nothing
        with Journal(tmp_path / "j.jsonl") as journal:
            again = ask_all(requests(2), ask, journal, concurrency=1, progress=False)
        assert again == {"asked": 0, "written": 0, "failed": 0} and len(srv.seen) == 4
    rows = [json.loads(x) for x in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert sorted(r["text"] for r in rows) == ["answer to describe 0", "answer to describe 1"]


@pytest.mark.parametrize("bad", ["truncated", "not-completion", "no-choices", "html",
                                 "500-echo"])
def test_a_bad_answer_is_logged_not_written_and_asked_again(bad, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="cliplens")
    # 500-echo is retried by the client: answer it badly on every try
    script = [bad] * (3 if bad == "500-echo" else 1)
    with Server(script) as srv:
        a, ask = asker(srv.url, monkeypatch, retries=2 if bad == "500-echo" else 0)
        with Journal(tmp_path / "j.jsonl") as journal:
            counts = ask_all(requests(3), ask, journal, concurrency=1, progress=False)
        assert counts == {"asked": 3, "written": 2, "failed": 1}
        assert "asked again" in caplog.text
        with Journal(tmp_path / "j.jsonl") as journal:
            assert ask_all(requests(3), ask, journal, concurrency=2,
                           progress=False)["written"] == 1
    text = (tmp_path / "j.jsonl").read_text()
    assert len(text.splitlines()) == 3 and len({json.loads(x)["feature"]
                                                for x in text.splitlines()}) == 3
    assert KEY not in text and KEY not in caplog.text
    if bad == "500-echo":
        assert "bad auth Bearer ***" in caplog.text  # the echoed key was redacted


def test_timeouts_are_retried(tmp_path, monkeypatch):
    with Server(["slow"]) as srv:
        a, ask = asker(srv.url, monkeypatch, timeout=0.5, retries=1)
        assert ask(requests(1)[0]) == "answer to describe 0"
        assert [w for _, w, *_ in srv.seen] == ["slow", "ok"]
    with Server(["slow", "slow"]) as srv:
        a, ask = asker(srv.url, monkeypatch, timeout=0.5, retries=1)
        with pytest.raises(AnswerError, match="timed out"):
            ask(requests(1)[0])


def test_an_unreachable_endpoint_stops_with_a_clear_error(tmp_path, monkeypatch):
    with Server() as srv:
        url = srv.url  # a port nothing listens on once the server is gone
    a, ask = asker(url, monkeypatch, retries=1, timeout=1.0)
    with Journal(tmp_path / "j.jsonl") as journal:
        with pytest.raises(EndpointError, match="unreachable") as e:
            ask_all(requests(20), ask, journal, concurrency=2, progress=False)
    assert KEY not in str(e.value)
    assert (tmp_path / "j.jsonl").read_text() == ""


def test_a_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("CLIPLENS_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="CLIPLENS_NO_SUCH_KEY"):
        Asker(Endpoint(base_url="http://127.0.0.1:9/v1", model="m",
                       key_env="CLIPLENS_NO_SUCH_KEY"))


def test_the_interpreter_name_drops_credentials_from_the_url():
    e = Endpoint(base_url="https://user:pw@api.example.org:8443/v1?key=abc#x", model="vlm",
                 key_env="K")
    assert e.name == "https://api.example.org:8443/v1#vlm"


def test_answer_text_reads_content_parts_and_refuses_the_rest():
    class Msg:
        content = [{"type": "text", "text": "a red"}, {"type": "text", "text": "circle"}]

    class Choice:
        message = Msg()

    class Resp:
        choices = [Choice()]

    assert answer_text(Resp()) == "a red circle"
    with pytest.raises(AnswerError, match="not a chat completion"):
        answer_text("<html>")


def test_the_journal_drops_a_line_cut_by_a_kill_and_refuses_a_damaged_one(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        for r in requests(2):
            assert j.append({**r, "text": "t"})
        assert not j.append({**requests(1)[0], "text": "again"})  # never twice
    with open(path, "a") as fh:
        fh.write('{"feature": 2, "langu')  # killed mid-write
    with Journal(path) as j:
        assert len(j.rows) == 2 and [r["feature"] for r in j.missing(requests(3))] == [2]
    assert path.read_text().endswith("}\n")
    path.write_text('{"feature": 0}\n' + path.read_text())
    with pytest.raises(ValueError, match="line 1 is not a journal row"):
        Journal(path)


def test_answers_with_line_separators_and_non_ascii_survive_a_reopen(tmp_path):
    path = tmp_path / "j.jsonl"
    odd = "красный\u2028круг\u2029 \x85 «ok»"
    with Journal(path) as j:
        assert j.append({**requests(1)[0], "text": odd})
    with Journal(path) as j:
        assert [r["text"] for r in j.rows.values()] == [odd]


def test_an_answer_cut_at_max_tokens_is_kept_and_marked(tmp_path, monkeypatch):
    with Server(["cut"]) as srv:
        a, ask = asker(srv.url, monkeypatch)
        with Journal(tmp_path / "j.jsonl") as journal:
            ask_all(requests(2), ask, journal, concurrency=1, progress=False)
            rows = sorted(journal.rows.values(), key=lambda r: r["feature"])
    assert rows[0]["text"] == "a red cir" and rows[0]["finish_reason"] == "length"
    assert rows[1]["finish_reason"] == "stop"
