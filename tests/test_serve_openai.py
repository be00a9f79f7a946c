"""`adaprefix serve`'s OpenAI-compatible routes, driven by the official `openai` client against a real uvicorn server on
localhost serving two adapters of a tiny random Llama (issue 26, section 3).

References come from outside the server: each adapter loaded alone on a fresh copy of the backbone, generating
greedily with the code `adaprefix predict` generates with (generate_completions).
"""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

openai = pytest.importorskip("openai")

from adaprefix import AdaptivePrefixConfig, attach, load_adapter  # noqa: E402
from adaprefix.serve.app import create_app  # noqa: E402
from adaprefix.serve.engine import Engine, Settings  # noqa: E402
from adaprefix.tasks.kinds.generation import generate_completions  # noqa: E402
from decoder_helpers import QA_CORPUS, bpe_tokenizer, tiny_llama  # noqa: E402
from serve_helpers import uvicorn_server  # noqa: E402

ADAPTERS = {"qa": dict(prefix_length=3, token_gate_weight_std=0.5), "pt": dict(method="pt2", prefix_length=5)}
PROMPTS = ["Is the sky blue? Answer:", "Do fish swim?", "A dog barks loudly. An animal makes noise. Yes or no?"]
TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


def _adapters(folder):
    tokenizer = bpe_tokenizer(QA_CORPUS)
    vocab = len(tokenizer)
    for seed, (name, settings) in enumerate(ADAPTERS.items()):
        torch.manual_seed(seed + 3)
        attach(tiny_llama(vocab), AdaptivePrefixConfig(**settings)).save_adapter(folder / name)
    return tokenizer, vocab


def _serve(folder, tokenizer, vocab, **settings):
    engine = Engine(Settings(**{"max_wait_ms": 50, "max_new_tokens": 32, **settings}))
    engine.add_language_model_adapter("qa", folder / "qa", tiny_llama(vocab), tokenizer)
    engine.add_language_model_adapter("pt", folder / "pt")
    return uvicorn_server(create_app(engine))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(client, base URL, tokenizer, the adapters' folder, vocabulary size)."""
    folder = tmp_path_factory.mktemp("openai")
    tokenizer, vocab = _adapters(folder)
    with _serve(folder, tokenizer, vocab) as (base, _):
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0), base, tokenizer, folder, vocab


def _alone(folder, vocab, tokenizer, name, prompts, max_tokens, add_special_tokens=True):
    """Greedy completions of the adapter loaded alone on a fresh backbone, as `adaprefix predict` generates."""
    model = load_adapter(tiny_llama(vocab), folder / name)
    ids = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    return generate_completions(model, tokenizer, ids, max_tokens, batch_size=1)


def test_models_list_names_the_served_adapters(served):
    client = served[0]
    models = client.models.list()
    assert [m.id for m in models.data] == ["qa", "pt"]
    assert all(m.object == "model" and m.owned_by == "adaprefix" for m in models.data)


def test_greedy_completions_equal_the_adapter_alone(served):
    client, _, tokenizer, folder, vocab = served
    for name in ADAPTERS:
        answer = client.completions.create(model=name, prompt=PROMPTS, max_tokens=12)
        absent_and_zero = client.completions.create(model=name, prompt=PROMPTS[0], max_tokens=12, temperature=0)
        reference = _alone(folder, vocab, tokenizer, name, PROMPTS, 12)
        assert [c.text for c in answer.choices] == reference
        assert [c.index for c in answer.choices] == [0, 1, 2]
        assert absent_and_zero.choices[0].text == reference[0]
        assert answer.object == "text_completion" and answer.model == name and answer.id.startswith("cmpl-")
        prompt_tokens = sum(len(tokenizer(p)["input_ids"]) for p in PROMPTS)
        assert answer.usage.prompt_tokens == prompt_tokens
        assert answer.usage.total_tokens == prompt_tokens + answer.usage.completion_tokens
        for choice in answer.choices:
            assert choice.logprobs is None and choice.finish_reason in ("stop", "length")
            if choice.finish_reason == "length":
                assert len(tokenizer(choice.text, add_special_tokens=False)["input_ids"]) >= 1
    # The adapters differ, so the routing by `model` is seen.
    assert client.completions.create(model="qa", prompt=PROMPTS, max_tokens=12).choices != \
        client.completions.create(model="pt", prompt=PROMPTS, max_tokens=12).choices


def test_generate_and_completions_agree(served):
    client, base = served[:2]
    generated = httpx.post(f"{base}/v1/generate", json={"adapter": "qa", "inputs": PROMPTS, "max_new_tokens": 10})
    completed = client.completions.create(model="qa", prompt=PROMPTS, max_tokens=10)
    assert generated.json()["completions"] == [c.text for c in completed.choices]


def _streamed(client, **request):
    texts, finish, chunks = {}, {}, []
    for chunk in client.completions.create(stream=True, **request):
        chunks.append(chunk)
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason is not None:
                finish[choice.index] = choice.finish_reason
    return texts, finish, chunks


def test_streaming_yields_the_same_text_in_pieces(served):
    client = served[0]
    whole = client.completions.create(model="qa", prompt=PROMPTS, max_tokens=24)
    texts, finish, chunks = _streamed(client, model="qa", prompt=PROMPTS, max_tokens=24,
                                      stream_options={"include_usage": True})
    assert [texts[i] for i in range(3)] == [c.text for c in whole.choices]
    assert [finish[i] for i in range(3)] == [c.finish_reason for c in whole.choices]
    pieces = [c for chunk in chunks for c in chunk.choices if c.text]
    assert len(pieces) > len(PROMPTS)  # sent as generated, not one piece per prompt
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert all(chunk.id == chunks[0].id and chunk.object == "text_completion" for chunk in chunks)


def test_the_stream_is_server_sent_events_ending_with_done(served):
    base = served[1]
    with httpx.stream("POST", f"{base}/v1/completions", json={"model": "pt", "prompt": "Hi", "max_tokens": 4,
                                                               "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events) and events[-1] == "data: [DONE]"


def test_a_stream_whose_client_leaves_frees_its_queue_places_and_the_server_goes_on(served):
    base = served[1]
    with httpx.stream("POST", f"{base}/v1/completions", json={"model": "qa", "prompt": PROMPTS, "max_tokens": 32,
                                                               "stream": True}) as response:
        next(response.iter_lines())
    for _ in range(200):
        if httpx.get(f"{base}/health").json()["queued"] == 0:
            break
        time.sleep(0.05)
    assert httpx.get(f"{base}/health").json()["queued"] == 0
    assert httpx.post(f"{base}/v1/completions", json={"model": "qa", "prompt": "Hi", "max_tokens": 2}).status_code == 200


def test_stop_strings_cut_the_text_streamed_or_not(served):
    client = served[0]
    full = client.completions.create(model="qa", prompt=PROMPTS[0], max_tokens=24).choices[0]
    assert len(full.text) > 6, full.text
    stop = full.text[3:6]
    cut = client.completions.create(model="qa", prompt=PROMPTS[0], max_tokens=24, stop=[stop, "never there"])
    assert cut.choices[0].text == full.text[:full.text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < 24
    texts, finish, _ = _streamed(client, model="qa", prompt=PROMPTS[0], max_tokens=24, stop=stop)
    assert texts[0] == cut.choices[0].text and finish[0] == "stop"


def test_a_seed_makes_sampling_reproducible_whatever_shares_the_batch(served):
    client = served[0]
    request = dict(model="qa", prompt=PROMPTS[1], max_tokens=16, temperature=1.5, seed=7)
    first = client.completions.create(**request).choices[0].text
    with ThreadPoolExecutor(3) as pool:  # batched with a greedy prompt and another seed's
        others = [pool.submit(client.completions.create, model="pt", prompt=PROMPTS, max_tokens=16),
                  pool.submit(client.completions.create, **{**request, "seed": 8}),
                  pool.submit(client.completions.create, **request)]
        again = others[2].result().choices[0].text
        other_seed = others[1].result().choices[0].text
    assert again == first
    assert other_seed != first
    assert first != client.completions.create(model="qa", prompt=PROMPTS[1], max_tokens=16).choices[0].text
    nucleus = dict(request, top_p=0.5)
    assert client.completions.create(**nucleus).choices[0].text == client.completions.create(**nucleus).choices[0].text
    texts, _, _ = _streamed(client, **request)
    assert texts[0] == first


def _refused(call, status):
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    assert caught.value.status_code == status, caught.value.response.text
    body = caught.value.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


@pytest.mark.parametrize("field, value", [("n", 2), ("logprobs", 1), ("echo", True), ("best_of", 3),
                                          ("suffix", "x"), ("logit_bias", {"5": 10}), ("frequency_penalty", 0.5),
                                          ("presence_penalty", -1.0)])
def test_unsupported_openai_fields_are_refused_by_name(served, field, value):
    client = served[0]
    error = _refused(lambda: client.completions.create(model="qa", prompt="Hi", max_tokens=2, **{field: value}), 400)
    assert error["param"] == field and error["code"] == "unsupported_parameter"
    assert error["type"] == "invalid_request_error" and error["message"].startswith(f"{field}: {value!r} is not")


def test_other_bad_requests_get_openai_errors_naming_the_problem(served):
    client = served[0]
    create = client.completions.create
    unknown = _refused(lambda: create(model="nope", prompt="Hi"), 404)
    assert unknown["code"] == "model_not_found" and unknown["param"] == "model" and "served: qa, pt" in unknown["message"]
    field = _refused(lambda: create(model="qa", prompt="Hi", extra_body={"typo": 1}), 400)
    assert field["param"] == "typo" and "Extra inputs are not permitted" in field["message"]
    budget = _refused(lambda: create(model="qa", prompt="Hi", max_tokens=33), 400)
    assert budget["param"] == "max_tokens" and "over this server's limit of 32 (--max-new-tokens)" in budget["message"]
    top_p = _refused(lambda: create(model="qa", prompt="Hi", top_p=0.5), 400)
    assert top_p["param"] == "top_p" and "temperature is 0 or absent (greedy)" in top_p["message"]
    stops = _refused(lambda: create(model="qa", prompt="Hi", stop=["a", "b", "c", "d", "e"]), 400)
    assert stops["param"] == "stop" and "5 stop strings; at most 4" in stops["message"]
    long = _refused(lambda: create(model="qa", prompt="yes " * 300, max_tokens=8), 400)
    assert long["code"] == "context_length_exceeded" and long["param"] == "prompt"
    assert "prompt[0]" in long["message"] and "248-token prompt limit" in long["message"]
    options = _refused(lambda: create(model="qa", prompt="Hi", stream_options={"include_usage": True}), 400)
    assert options["param"] == "stream_options" and "only allowed when stream is true" in options["message"]


def test_limits_apply_to_the_openai_routes(served):
    _, _, tokenizer, folder, vocab = served
    with _serve(folder, tokenizer, vocab, max_inputs=2, max_request_tokens=40, max_queue=2) as (base, _):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        many = _refused(lambda: client.completions.create(model="qa", prompt=["a", "b", "c"]), 413)
        assert many["param"] == "prompt" and "3 inputs, over this server's limit of 2" in many["message"]
        tokens = _refused(lambda: client.completions.create(model="qa", prompt=["Do fish swim? " * 8] * 2), 413)
        assert "over this server's limit of 40 per request (--max-request-tokens)" in tokens["message"]


def test_chat_is_refused_by_name_without_a_chat_template(served):
    client = served[0]
    error = _refused(lambda: client.chat.completions.create(model="qa", messages=[{"role": "user", "content": "Hi"}]),
                     400)
    assert error["code"] == "chat_template_missing" and "has no chat template" in error["message"]


def test_chat_renders_the_template_and_answers_as_the_adapter_alone(tmp_path):
    tokenizer, vocab = _adapters(tmp_path)
    tokenizer.chat_template = TEMPLATE
    messages = [{"role": "system", "content": "Answer yes or no."}, {"role": "user", "content": "Is fire cold?"}]
    with _serve(tmp_path, tokenizer, vocab) as (base, _):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model="pt", messages=messages, max_completion_tokens=10)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model="pt", messages=messages, max_tokens=10, stream=True))
        both = _refused(lambda: client.chat.completions.create(model="pt", messages=messages, max_tokens=3,
                                                               max_completion_tokens=3), 400)
    prompt = "system: Answer yes or no.\nuser: Is fire cold?\nassistant:"
    assert answer.choices[0].message.content == _alone(tmp_path, vocab, tokenizer, "pt", [prompt], 10,
                                                       add_special_tokens=False)[0]
    assert answer.object == "chat.completion" and answer.choices[0].message.role == "assistant"
    assert streamed == answer.choices[0].message.content
    assert both["param"] == "max_completion_tokens"


def test_the_openapi_schema_documents_the_openai_errors(served):
    schema = httpx.get(f"{served[1]}/openapi.json").json()
    for path in ("/v1/completions", "/v1/chat/completions"):
        responses = schema["paths"][path]["post"]["responses"]
        assert set(responses) == {"200", "400", "404", "413", "429", "500"}
        assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIErrorResponse")
        assert "text/event-stream" in responses["200"]["content"]
    assert set(schema["paths"]["/v1/predict"]["post"]["responses"]) >= {"422"}  # the server's own routes keep theirs
