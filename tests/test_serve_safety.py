"""`adaprefix serve` in front of clients it does not trust (issue 25, section 2): inputs of the wrong type or shape
get a 4xx naming the problem, every error has one shape and keeps the connection, admission limits answer with
their own status, large requests do not hold back small ones, a client that leaves takes its work with it, and
SIGTERM lets in-flight requests finish."""

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from adaprefix.serve.app import create_app
from adaprefix.serve.engine import Engine, ServeError, Settings
from serve_helpers import free_port, runner, uvicorn_server

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client(serve_runs):
    engine = Engine.from_runs([str(serve_runs["sentiment"]), str(serve_runs["ner"])], Settings(max_wait_ms=0))
    with TestClient(create_app(engine)) as test_client:
        yield test_client


def _post(client, body, path="/v1/predict"):
    """Sent as ASCII JSON, so that a lone surrogate travels as its escape (\\ud800), as any JSON client may."""
    return client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("inputs,message", [
    ([{"tokens": 5}], "inputs[0]: field 'tokens': Expected a list of words (strings), got 5."),
    ([{"tokens": None}], "field 'tokens': Expected a list of words (strings), got None."),
    ([{"tokens": "John Smith"}], "got 'John Smith'. A text is split into words at spaces: give it as the input"),
    ([{"tokens": ["John", 3]}], "Expected a list of words (strings), got ['John', 3]."),
    ([["John Smith", "in Paris"]], "inputs[0]: input 1: 2 texts, but tagging task 'conll04' takes one"),
])
def test_tagging_inputs_of_the_wrong_type_or_shape_are_refused(client, inputs, message):
    response = _post(client, {"adapter": "ner", "inputs": inputs})
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]


def test_a_text_that_is_not_a_string_is_refused_by_field(client):
    response = _post(client, {"adapter": "sentiment", "inputs": [{"text": 5}]})
    assert response.status_code == 422 and "inputs[0]: field 'text': Expected a string, got 5." in response.text


@pytest.mark.parametrize("words,lost", [
    (["John", "\u200b", "Smith"], "1 of its 3 words have no sub-token in adapter 'ner'\\'s tokenizer"),
    (["IBM", "", "hired", "Mary"], "tokens[1] ('')"),
    (["Paris", "\x07"], "tokens[1] ('\\x07')"),
])
def test_words_the_tokenizer_drops_are_refused_instead_of_left_without_a_tag(client, words, lost):
    response = _post(client, {"adapter": "ner", "inputs": [{"tokens": ["fine"]}, {"tokens": words}]})
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("inputs[1]: ")
    assert lost.replace("\\'", "'") in response.json()["error"]


def test_a_tagging_answer_has_one_tag_per_given_word(client):
    words = ["New York", "is", "big", "IBM"]  # a word with a space inside is still one word
    response = _post(client, {"adapter": "ner", "inputs": [{"tokens": words}]})
    assert response.status_code == 200 and len(response.json()["predictions"][0]["tags"]) == len(words)


@pytest.mark.parametrize("body,where", [
    ({"adapter": "sentiment", "inputs": ["fine \ud800"]}, "inputs[0]: character 5 is a lone UTF-16 surrogate"),
    ({"adapter": "ner", "inputs": [{"tokens": ["a", "\udc00"]}]}, "inputs[0].tokens[1]: character 0"),
    ({"adapter": "sentiment", "inputs": [["a", "b\ud83d"]]}, "inputs[0][1]: character 1"),
    ({"adapter": "sentiment\ud800", "inputs": ["x"]}, "adapter: character 9"),
    ({"adapter": "sentiment", "inputs": [{"text": "x", "\udfff": 1}]}, "inputs[0] (a key): character 0"),
])
def test_a_lone_surrogate_in_any_text_is_a_422(client, body, where):
    response = _post(client, body)
    assert response.status_code == 422, response.text
    assert where in response.json()["error"]


def test_a_non_finite_number_is_a_422_not_an_answer_that_cannot_be_written(client):
    body = b'{"adapter": "sentiment", "inputs": [{"text": "x", "score": NaN}]}'
    response = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "inputs[0].score: nan is not a finite number" in response.text


@pytest.mark.parametrize("value", ["5", True, 5.0])
def test_max_new_tokens_is_an_integer_not_something_that_looks_like_one(client, value):
    response = _post(client, {"adapter": "sentiment", "inputs": ["x"], "max_new_tokens": value}, "/v1/generate")
    assert response.status_code == 422
    assert "malformed request body: body.max_new_tokens: Input should be a valid integer" in response.text


def test_an_unknown_field_is_refused_not_ignored(client):
    response = _post(client, {"adapter": "sentiment", "inputs": ["x"], "max_new_token": 4}, "/v1/generate")
    assert response.status_code == 422 and "body.max_new_token: Extra inputs are not permitted" in response.text


def test_every_error_has_one_shape(client):
    answers = {400: client.post("/v1/predict", content=b"\xff", headers={"content-type": "application/json"}),
               404: client.get("/nope"), 405: client.delete("/v1/predict"),
               422: client.post("/v1/predict", content=b"{", headers={"content-type": "application/json"})}
    for status, response in answers.items():
        assert response.status_code == status
        assert list(response.json()) == ["error"], response.text
    assert "no route /nope; the routes are GET /health, GET /v1/adapters, POST /v1/predict, POST /v1/generate" \
        in answers[404].json()["error"]
    assert answers[405].json()["error"].startswith("DELETE is not allowed on /v1/predict")
    assert answers[405].headers["allow"] == "POST"


def test_openapi_documents_the_errors_as_sent(client):
    schema = client.get("/openapi.json").json()
    assert schema["components"]["schemas"]["ErrorResponse"]["required"] == ["error"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # FastAPI's {"detail": ...}: never sent
    for path in ("/v1/predict", "/v1/generate"):
        responses = schema["paths"][path]["post"]["responses"]
        assert set(responses) == {"200", "400", "404", "413", "422", "429", "500"}
        for status in ("400", "404", "413", "422", "429", "500"):
            assert responses[status]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorResponse"}
        assert "Retry-After" in responses["429"]["headers"]
    assert set(schema["paths"]["/health"]["get"]["responses"]) == {"200", "500"}


def test_the_docs_page_loads_its_scripts_from_this_server(client):
    import re

    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']([^"']+\.(?:js|css))["']""", page.text)
    assert len(assets) >= 2 and all(url.startswith("/") for url in assets), assets  # no CDN
    for url in assets:
        served = client.get(url)
        assert served.status_code == 200 and len(served.content) > 1000, url


def _slow(engine, seconds):
    """Each forward takes at least ``seconds``, so that tests can act while one runs."""
    run = engine.run

    def slow(rows):
        time.sleep(seconds)
        return run(rows)

    engine.run = slow


def test_admission_limits_each_answer_with_their_own_status(serve_runs):
    settings = Settings(max_batch_size=2, max_wait_ms=0, max_body_bytes=1500, max_inputs=3, max_request_tokens=30,
                        max_queue=4)
    engine = Engine.from_runs([str(serve_runs["sentiment"])], settings)
    _slow(engine, 0.3)
    with TestClient(create_app(engine)) as client:
        big = _post(client, {"adapter": "sentiment", "inputs": ["word " * 400]})
        assert big.status_code == 413 and "over this server's limit of 1500 bytes (--max-body-bytes)" in big.text

        def chunks():  # no Content-Length: counted as it arrives
            yield b'{"adapter": "sentiment", "inputs": ["'
            for _ in range(40):
                yield b"word " * 10
            yield b'"]}'

        streamed = client.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413 and "more than 1500 bytes" in streamed.text
        many = _post(client, {"adapter": "sentiment", "inputs": ["a", "b", "c", "d"]})
        assert many.status_code == 413 and "4 inputs, over this server's limit of 3 per request (--max-inputs)" \
            in many.text
        long = _post(client, {"adapter": "sentiment", "inputs": ["good " * 20, "bad " * 20]})  # 16 tokens each, cut
        assert long.status_code == 413 and "32 tokens in all, over this server's limit of 30 per request " \
            "(--max-request-tokens)" in long.text
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(_post, client, {"adapter": "sentiment", "inputs": ["a", "b", "c"]})
            for _ in range(100):
                if client.get("/health").json()["queued"] == 3:
                    break
                time.sleep(0.01)
            refused = _post(client, {"adapter": "sentiment", "inputs": ["d", "e"]})
            assert first.result().status_code == 200
        assert refused.status_code == 429 and "the queue holds 3 inputs; 2 more would take it past this " \
            "server's limit of 4 (--max-queue)" in refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert _post(client, {"adapter": "sentiment", "inputs": ["d", "e"]}).status_code == 200
    with pytest.raises(ServeError, match="max_queue: 2 is below max_inputs"):
        Settings(max_inputs=3, max_queue=2)
    with pytest.raises(ServeError, match="max_inputs: expected a positive integer, got True"):
        Settings(max_inputs=True)


def test_serve_flags_set_the_limits(serve_runs, monkeypatch):
    import uvicorn

    from adaprefix.cli import app as cli

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(settings=app.state.engine.settings))
    result = runner.invoke(cli, ["serve", str(serve_runs["sentiment"]), "--max-body-bytes", "1000", "--max-inputs",
                                 "7", "--max-request-tokens", "99", "--max-queue", "70", "--max-new-tokens", "9"])
    assert result.exit_code == 0, result.output
    settings = served["settings"]
    assert (settings.max_body_bytes, settings.max_inputs, settings.max_request_tokens, settings.max_queue,
            settings.max_new_tokens) == (1000, 7, 99, 70, 9)


def test_a_connection_stays_usable_after_a_500(serve_runs, monkeypatch):
    engine = Engine.from_runs([str(serve_runs["sentiment"])], Settings(max_wait_ms=0))
    monkeypatch.setattr(engine, "run", lambda rows: 1 / 0)
    with uvicorn_server(create_app(engine)) as (_, port):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", "/v1/predict", body=json.dumps({"adapter": "sentiment", "inputs": ["x"]}),
                           headers={"content-type": "application/json"})
        failed = connection.getresponse()
        assert failed.status == 500 and json.loads(failed.read()) == {
            "error": "internal error (ZeroDivisionError); the server's log has the details"}
        socket_before = connection.sock
        connection.request("GET", "/health")  # on the same kept-alive connection
        assert connection.getresponse().status == 200 and connection.sock is socket_before
        connection.close()


def test_a_large_request_does_not_hold_back_a_small_one(serve_runs):
    """Forwards of 4 rows, 40 ms each at least: 100 inputs take 25 forwards. A 1-input request sent meanwhile joins
    the next forward instead of waiting for all of them."""
    engine = Engine.from_runs([str(serve_runs["sentiment"])], Settings(max_batch_size=4, max_wait_ms=0))
    _slow(engine, 0.04)
    done = []
    with TestClient(create_app(engine)) as client:
        def ask(name, inputs):
            response = _post(client, {"adapter": "sentiment", "inputs": inputs})
            done.append((name, response.status_code, client.app.state.batcher.batches))

        with ThreadPoolExecutor(2) as pool:
            large = pool.submit(ask, "large", [f"text {i}" for i in range(100)])
            while client.app.state.batcher.batches < 2:
                time.sleep(0.01)
            pool.submit(ask, "small", ["a wonderful film"]).result()
            large.result()
    assert [(name, status) for name, status, _ in done] == [("small", 200), ("large", 200)]
    assert done[0][2] <= 6  # answered a forward or two after it came, not after the large request's 25


def test_work_of_a_client_that_went_away_is_dropped(serve_runs):
    """200 inputs take 50 forwards of 40 ms at least; the client gives up after 0.4 s. Its rows not yet in a forward
    are dropped, so the next request does not wait for them."""
    engine = Engine.from_runs([str(serve_runs["sentiment"])], Settings(max_batch_size=4, max_wait_ms=0))
    _slow(engine, 0.04)
    with uvicorn_server(create_app(engine)) as (base, _):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/v1/predict", json={"adapter": "sentiment", "inputs": [f"t {i}" for i in range(200)]},
                       timeout=0.4)
        answer = httpx.post(f"{base}/v1/predict", json={"adapter": "sentiment", "inputs": ["still here"]}, timeout=30)
        health = httpx.get(f"{base}/health").json()
    assert answer.status_code == 200
    assert health["rows"] < 100, f"{health['rows']} rows ran: most of the 200 for a client that had gone"
    assert health["queued"] == 0


SERVER = """
import sys, time
sys.path.insert(0, sys.argv[1])
import uvicorn
from adaprefix.serve.app import create_app
from adaprefix.serve.engine import Engine, Settings
engine = Engine.from_runs([sys.argv[2]], Settings(max_batch_size=4, max_wait_ms=0))
run = engine.run
engine.run = lambda rows: (time.sleep(0.05), run(rows))[1]
uvicorn.run(create_app(engine), host="127.0.0.1", port=int(sys.argv[3]), log_level="warning")
"""


def test_sigterm_finishes_requests_in_flight_and_refuses_new_ones(serve_runs):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(REPO), str(serve_runs["sentiment"]), str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for _ in range(600):
            try:
                httpx.get(f"{base}/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        answers = []
        inputs = [f"text {i}" for i in range(40)]  # 10 forwards of 50 ms at least
        flight = threading.Thread(target=lambda: answers.append(
            httpx.post(f"{base}/v1/predict", json={"adapter": "sentiment", "inputs": inputs}, timeout=60)))
        flight.start()
        while httpx.get(f"{base}/health").json()["batches"] < 1:
            time.sleep(0.01)
        server.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/health", timeout=5)
        flight.join(timeout=60)
        assert answers and answers[0].status_code == 200
        assert len(answers[0].json()["predictions"]) == len(inputs)
        assert server.wait(timeout=30) == -signal.SIGTERM  # uvicorn re-raises the signal once it has finished
    finally:
        if server.poll() is None:
            server.kill()
