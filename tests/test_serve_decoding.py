"""adaprefix/serve/decoding.py: each row of a batched generate() keeps its own sampling, stop strings, stream and
cancellation (the OpenAI-compatible routes' decoding, tests/test_serve_openai.py end to end)."""

import torch

from adaprefix.serve.decoding import RowSampler, RowState, RowWatcher, Sampling, Stream, settled
from decoder_helpers import word_tokenizer

WORDS = ["the", "cat", "sat", "on", "a", "mat"]  # ids 4..9; </s> is 2


def test_text_that_could_start_a_stop_string_is_held_back():
    assert settled("the cat sa", ()) == len("the cat")  # the last word may still change
    # " a b" is settled by whitespace, but "a b" may be the start of the stop string "a b c": hold from there.
    assert settled("x a b", ["a b c"]) == 2


def test_sampling_rows_draw_from_their_own_seeded_stream_and_greedy_rows_are_untouched():
    torch.manual_seed(0)
    scores = torch.randn(3, 50)
    settings = [Sampling(), Sampling(temperature=1.5, seed=3), Sampling(temperature=1.5, seed=3)]
    out = RowSampler(settings, torch.device("cpu"))(None, scores.clone())
    assert torch.equal(out[0], scores[0])
    assert torch.isfinite(out[1]).sum() == 1 and torch.equal(out[1], out[2])  # one token left; same seed, same draw
    draws = {int(RowSampler([Sampling(temperature=1.5, seed=s)], torch.device("cpu"))(None, scores[:1].clone())
                 .argmax()) for s in range(20)}
    assert len(draws) > 1


def test_extreme_temperature_and_top_p_pick_the_greedy_token_not_nan():
    scores = torch.tensor([[0.5, 3.0, -1.0, 2.9]])
    for sampling in (Sampling(temperature=1e-300, seed=0), Sampling(temperature=2.0, top_p=5e-324, seed=0)):
        assert int(RowSampler([sampling], torch.device("cpu"))(None, scores.clone()).argmax()) == 1


def _watch(rows, tokens, max_new_tokens=10):
    tokenizer = word_tokenizer(WORDS)
    watcher = RowWatcher(rows, tokenizer, tokenizer.eos_token_id, 1, max_new_tokens)
    ids = torch.ones(len(rows), 1, dtype=torch.long)
    for step in zip(*tokens):
        ids = torch.cat([ids, torch.tensor(step)[:, None]], dim=1)
        done = watcher(ids, None)
    return done


def test_rows_end_at_eos_a_stop_string_or_cancellation_and_stream_the_final_text():
    pieces = []
    streamed = RowState(Sampling(stop=("on a",)), Stream(lambda delta, done: pieces.append((delta, done))),
                        lambda: False)
    plain = RowState(Sampling(), None, lambda: False)
    cancelled = RowState(Sampling(), None, lambda: True)
    # the cat sat on a mat </s>  /  the cat </s> ...  /  anything
    done = _watch([streamed, plain, cancelled], [[4, 5, 6, 7, 8, 9], [4, 5, 2, 2, 2, 2], [4, 4, 4, 4, 4, 4]])
    assert done.tolist() == [True, True, True]
    assert (streamed.done.text, streamed.done.finish_reason, streamed.done.tokens) == ("the cat sat ", "stop", 5)
    assert "".join(delta for delta, _ in pieces) == "the cat sat "
    assert len([d for d, _ in pieces if d]) > 1 and pieces[-1][1] is streamed.done  # in pieces, then the end
    assert (plain.done.text, plain.done.finish_reason, plain.done.tokens) == ("the cat", "stop", 3)  # EOS counted
    assert cancelled.done.finish_reason == "cancelled" and cancelled.ids == []


def test_a_row_that_runs_to_its_budget_ends_with_length():
    row = RowState(Sampling(), None, lambda: False)
    _watch([row], [[4, 5, 6]], max_new_tokens=3)
    assert (row.done.text, row.done.finish_reason, row.done.tokens) == ("the cat sat", "length", 3)
