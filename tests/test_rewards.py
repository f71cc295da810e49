"""Reward sources: adapters, running normalisation vs numpy, clipping, weighted sums, and the score contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlfl.envs.rewards import (CallableReward, Clipped, GoldSentiment, RewardError, RewardSource, RunningNormalizer,
                               WeightedSum, as_reward_source, check_scores, reward_model_source, source_name)

P3 = ["The film was", "Dinner", "I bought"]
C3 = [" great", " was bad", " a lamp"]


class Recorder:
    """A reward source with a name that returns given scores and records its calls."""

    def __init__(self, scores, name="recorder"):
        self.scores, self.name, self.calls = scores, name, 0

    def score(self, prompts, completions):
        self.calls += 1
        return self.scores(prompts, completions) if callable(self.scores) else self.scores


def has_great(prompt: str, completion: str) -> float:
    return float("great" in completion)


# ------------------------------------------------------------------------------------ check_scores
def test_check_scores_accepts_lists_ints_bools_and_tensors_as_float64_copies():
    src = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    out = check_scores(src, P3, C3, "s")
    assert out.dtype == np.float64 and out.tolist() == [1.0, 2.0, 3.0]
    out[0] = 9
    assert src[0] == 1.0  # a copy: the source may reuse its buffer
    assert check_scores([1, 0, 2], P3, C3, "s").tolist() == [1.0, 0.0, 2.0]
    assert check_scores(np.array([True, False, True]), P3, C3, "s").tolist() == [1.0, 0.0, 1.0]
    t = torch.tensor([0.5, 1.5, 2.5], requires_grad=True) * 2
    assert check_scores(t, P3, C3, "s").tolist() == [1.0, 3.0, 5.0]
    assert check_scores([], [], [], "s").shape == (0,)


def test_check_scores_wrong_shape_message_is_exact():
    with pytest.raises(RewardError) as e:
        check_scores(np.zeros((3, 2)), P3, C3, "my_fn")
    assert str(e.value) == ("reward source 'my_fn' returned shape (3, 2) for 3 completions; return one float per "
                            "completion")
    assert isinstance(e.value, ValueError)
    with pytest.raises(RewardError, match=r"returned shape \(\) for 3 completions"):
        check_scores(1.0, P3, C3, "my_fn")
    with pytest.raises(RewardError, match=r"returned shape \(3, 1\)"):
        check_scores(np.zeros((3, 1)), P3, C3, "my_fn")


def test_check_scores_wrong_length_and_dtype():
    with pytest.raises(RewardError, match=r"^reward source 'judge' returned 2 scores for 3 completions; return one "
                                          r"float per completion$"):
        check_scores([1.0, 2.0], P3, C3, Recorder(None, name="judge"))
    with pytest.raises(RewardError, match=r"'judge' returned dtype <U1 for 3 completions"):
        check_scores(["a", "b", "c"], P3, C3, "judge")
    with pytest.raises(RewardError, match=r"'judge' returned dtype object"):
        check_scores([None, 1.0, 2.0], P3, C3, "judge")
    with pytest.raises(RewardError, match=r"'judge' returned list that is not an array of numbers"):
        check_scores([[1.0], [1.0, 2.0], 3.0], P3, C3, "judge")
    with pytest.raises(ValueError, match="3 prompts but 2 completions"):
        check_scores([1.0, 2.0], P3, C3[:2], "judge")


def test_check_scores_nan_names_source_index_and_offending_text_on_one_line():
    long_completion = " wonderful\n" + "x" * 200
    with pytest.raises(RewardError) as e:
        check_scores([0.0, float("nan"), np.inf], P3, [" ok", long_completion, " z"], has_great)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("reward source 'has_great' returned nan for completion 1 of 3 (and 1 more): ")
    assert "prompt 'Dinner'" in msg
    assert "completion ' wonderful\\nxxxx" in msg and "x" * 100 not in msg and "...'" in msg
    assert msg.endswith("scores must be finite")
    with pytest.raises(RewardError, match=r"returned -inf for completion 0 of 1: prompt 'p', completion 'c'"):
        check_scores([-np.inf], ["p"], ["c"], "s")


def test_source_name():
    assert source_name(has_great) == "has_great"
    assert source_name(Recorder(None, name="rm")) == "rm"
    assert source_name(lambda p, c: 0) == "<lambda>"
    assert source_name(GoldSentiment()) == "gold_sentiment"
    assert source_name(object()) == "object"


# ------------------------------------------------------------------------------------------ adapters
def test_callable_reward_per_item_and_batched():
    r = CallableReward(has_great)
    assert isinstance(r, RewardSource) and r.name == "has_great"
    assert r.score(P3, C3).tolist() == [1.0, 0.0, 0.0]
    calls = []

    def batch_len(prompts, completions):
        calls.append(len(prompts))
        return np.array([len(p) + len(c) for p, c in zip(prompts, completions)])

    b = CallableReward(batch_len, batched=True, name="len")
    assert b.score(P3, C3).tolist() == [18.0, 14.0, 15.0] and calls == [3] and b.name == "len"
    with pytest.raises(ValueError, match="needs a function"):
        CallableReward(3.0)


def test_callable_reward_errors_name_the_function():
    with pytest.raises(RewardError, match=r"^reward source 'pair' returned shape \(3, 2\) for 3 completions"):
        def pair(p, c):
            return (1.0, 2.0)
        CallableReward(pair).score(P3, C3)
    with pytest.raises(RewardError, match=r"'sometimes_nan' returned nan for completion 2 of 3.*prompt 'I bought', "
                                          r"completion ' a lamp'"):
        def sometimes_nan(p, c):
            return math.nan if "lamp" in c else 1.0
        CallableReward(sometimes_nan).score(P3, C3)
    with pytest.raises(RewardError, match=r"'short' returned 1 scores for 3 completions"):
        CallableReward(lambda ps, cs: [1.0], batched=True, name="short").score(P3, C3)


def test_weighted_sum_values_names_and_inner_checks():
    length = Recorder(lambda ps, cs: np.array([len(c) for c in cs], dtype=float), name="length")
    ws = WeightedSum([(has_great, 2.0), (length, -0.5)])
    assert ws.score(P3, C3).tolist() == [2.0 - 3.0, -4.0, -3.5]
    assert ws.name == "2*has_great + -0.5*length" and length.calls == 1
    with pytest.raises(RewardError, match="reward source 'bad' returned 2 scores for 3 completions"):
        WeightedSum([(has_great, 1.0), (Recorder([1.0, 2.0], name="bad"), 1.0)]).score(P3, C3)
    with pytest.raises(ValueError, match="at least one"):
        WeightedSum([])
    with pytest.raises(ValueError, match="entry 0: weight nan is not a finite number"):
        WeightedSum([(has_great, float("nan"))])
    with pytest.raises(ValueError, match=r"entry 1 is .*; pass \(source, weight\) pairs"):
        WeightedSum([(has_great, 1.0), has_great])


def test_running_normalizer_matches_numpy_over_many_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=k) for k in (1, 5, 17, 2, 64)]
    it = iter(batches)
    norm = RunningNormalizer(Recorder(lambda ps, cs: next(it), name="raw"), epsilon=1e-8)
    seen = []
    for b in batches:
        out = norm.score(["p"] * len(b), ["c"] * len(b))
        seen.extend(b)
        assert norm.count == len(seen)
        assert norm.mean == pytest.approx(np.mean(seen), rel=1e-12, abs=1e-12)
        assert norm.var == pytest.approx(np.var(seen), rel=1e-10, abs=1e-12)
        np.testing.assert_allclose(out, (b - np.mean(seen)) / np.sqrt(np.var(seen) + 1e-8), rtol=1e-9, atol=1e-9)
    assert norm.name == "normalized(raw)"
    assert norm.std == pytest.approx(np.std(seen), rel=1e-10)


def test_running_normalizer_first_single_score_is_zero_and_clip_bounds():
    norm = RunningNormalizer(lambda p, c: 5.0, epsilon=1e-8)
    assert norm.score(["p"], ["c"]).tolist() == [0.0]
    values = iter([np.array([0.0, 0.0, 0.0, 100.0])])
    clipped = RunningNormalizer(Recorder(lambda ps, cs: next(values)), epsilon=1e-8, clip=1.5)
    out = clipped.score(["p"] * 4, ["c"] * 4)
    assert out.max() == 1.5 and out[:3].tolist() == pytest.approx([-0.57735] * 3, rel=1e-4)


def test_running_normalizer_freeze_and_state_round_trip():
    rng = np.random.default_rng(1)
    data = rng.normal(size=50)
    norm = RunningNormalizer(CallableReward(lambda ps, cs: data[: len(ps)], batched=True))
    norm.score(["p"] * 50, ["c"] * 50)
    state = norm.state_dict()
    assert state == {"count": 50.0, "mean": pytest.approx(data.mean()), "m2": pytest.approx(data.var() * 50)}
    assert all(type(v) is float for v in state.values())

    norm.training = False
    a = norm.score(["p"] * 10, ["c"] * 10)
    assert norm.count == 50  # frozen
    restored = RunningNormalizer(CallableReward(lambda ps, cs: data[: len(ps)], batched=True))
    restored.load_state_dict(state)
    restored.training = False
    np.testing.assert_array_equal(restored.score(["p"] * 10, ["c"] * 10), a)
    with pytest.raises(ValueError, match="state lacks m2"):
        restored.load_state_dict({"count": 1, "mean": 0.0})
    with pytest.raises(ValueError, match="is not valid"):
        restored.load_state_dict({"count": -1, "mean": 0.0, "m2": 0.0})


def test_running_normalizer_checks_inner_source_and_arguments():
    with pytest.raises(RewardError, match="reward source 'nan_judge' returned nan"):
        RunningNormalizer(Recorder([np.nan], name="nan_judge")).score(["p"], ["c"])
    with pytest.raises(ValueError, match="epsilon=0"):
        RunningNormalizer(has_great, epsilon=0)
    with pytest.raises(ValueError, match="clip=-1"):
        RunningNormalizer(has_great, clip=-1)


def test_clipped():
    length = CallableReward(lambda p, c: float(len(c)), name="len")
    assert Clipped(length, 4.0, 7.0).score(P3, C3).tolist() == [6.0, 7.0, 7.0]
    assert Clipped(length, None, 6.5).score(P3, C3).tolist() == [6.0, 6.5, 6.5]
    assert Clipped(length, 6.5, None).score(P3, C3).tolist() == [6.5, 8.0, 7.0]
    assert Clipped(length, 0, 1).name == "clipped(len)"
    with pytest.raises(ValueError, match="low=2 > high=1"):
        Clipped(length, 2, 1)
    with pytest.raises(ValueError, match="needs a low or a high bound"):
        Clipped(length, None, None)
    with pytest.raises(RewardError, match="'inf_judge' returned inf"):
        Clipped(Recorder([np.inf], name="inf_judge"), 0, 1).score(["p"], ["c"])


def test_adapters_compose():
    r = Clipped(RunningNormalizer(WeightedSum([(has_great, 1.0), (lambda p, c: len(c) / 10, 1.0)])), -1, 1)
    out = r.score(P3, C3)
    assert out.shape == (3,) and np.all(np.abs(out) <= 1)
    assert out.argmax() == 0  # " great" scores highest under both terms


def test_gold_sentiment_source():
    g = GoldSentiment()
    pos, neg, none = g.score(["The soup was"] * 3, [" absolutely delicious.", " awful, just awful.", " at noon."])
    assert pos > 0.5 and neg < -0.5 and none == 0.0
    # The prompt is read too: a completion can flip it.
    assert g.score(["The soup was great"], [" ... not!"])[0] > 0
    assert GoldSentiment(include_prompt=False).score(["Terrible."], [" Lovely."])[0] > 0 > g.score(
        ["Terrible. Terrible."], [" Lovely."])[0]


# ------------------------------------------------------------------------------------ as_reward_source
def test_as_reward_source_dispatch(tmp_path):
    src = Recorder([1.0])
    assert as_reward_source(src) is src
    wrapped = as_reward_source(has_great)
    assert isinstance(wrapped, CallableReward) and wrapped.score(P3, C3).tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(FileNotFoundError, match=r"nope: no such reward-model checkpoint directory; pass a directory "
                                                r"written by `rlfl reward train`"):
        as_reward_source(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"cannot use 42 \(int\) as a reward: pass a callable"):
        as_reward_source(42)


def tiny_reward_model(directory):
    """A 2-layer, 64-dim byte-level reward-model checkpoint (untrained head), with its score statistics."""
    pytest.importorskip("rlfl.reward")
    from rlfl.checkpoint import save_checkpoint, update_config
    from rlfl.model import GPT, GPTConfig
    from rlfl.reward import RewardModel
    from rlfl.tokenizer import byte_tokenizer

    torch.manual_seed(0)
    model = RewardModel(GPT(GPTConfig(vocab_size=262, block_size=64, n_layer=2, n_head=2, n_embd=64)))
    save_checkpoint(directory, model, byte_tokenizer(), stage="reward")
    update_config(directory, reward={"mean": 0.0, "std": 1.0})
    return directory


def test_reward_model_checkpoint_is_a_reward_source(tmp_path):
    path = tiny_reward_model(tmp_path / "rm")
    for source in (as_reward_source(str(path)), as_reward_source(path), reward_model_source(path, normalize=False)):
        scores = check_scores(source.score(P3, C3), P3, C3, source)
        assert scores.shape == (3,) and np.isfinite(scores).all() and len(set(scores.tolist())) == 3
    # Adapters wrap a reward model like any other source.
    assert WeightedSum([(str(path), 1.0), (has_great, 1.0)]).score(P3, C3).shape == (3,)
