"""TextGenerationEnv: Gymnasium/SB3 contracts, left padding and truncation, episode ends, rewards, errors."""

from __future__ import annotations

import logging
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from rlfl.chat_template import chat_prompt
from rlfl.envs.rewards import RewardError
from rlfl.envs.text_env import TextGenerationEnv
from rlfl.tokenizer import byte_tokenizer

TOK = byte_tokenizer()
PAD, EOT, END = TOK.pad_id, TOK.eot_id, TOK.special_tokens["<|end|>"]
PROMPTS = ["The film was", "I think", "Service here is", "Honestly,"]


class LengthReward:
    """A reward source: the completion's length in characters (and a record of every call)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []

    def score(self, prompts, completions):
        self.calls.append((list(prompts), list(completions)))
        return np.array([len(c) for c in completions], dtype=np.float64)


class ConstantReward:
    """A reward source that returns a fixed (possibly broken) value, under a name of its own."""

    name = "broken-judge"

    def __init__(self, value) -> None:
        self.value = value

    def score(self, prompts, completions):
        return self.value(len(completions)) if callable(self.value) else np.full(len(completions), self.value)


def make(prompts=PROMPTS, reward=None, **kw) -> TextGenerationEnv:
    kw.setdefault("max_new_tokens", 6)
    kw.setdefault("max_prompt_tokens", 16)
    return TextGenerationEnv(TOK, prompts, reward if reward is not None else LengthReward(), **kw)


def run(env: TextGenerationEnv, text: bytes | list[int]):
    """Step the tokens of ``text``; return the list of (obs, reward, terminated, truncated, info)."""
    out = []
    for t in text:
        out.append(env.step(int(t)))
        if out[-1][2] or out[-1][3]:
            break
    return out


# ---------------------------------------------------------------------------------------- contracts
@pytest.mark.parametrize("options", [{}, {"chat_template": True}, {"min_new_tokens": 3}, {"stop_tokens": []}])
def test_passes_gymnasium_and_sb3_env_checkers(options):
    env = make(render_mode="ansi", **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no spec, can't test other render modes" and SB3's space advice
        gym_check_env(env.unwrapped)
        sb3_check_env(env)


def test_spaces_match_tokenizer_and_lengths():
    env = make(max_new_tokens=5, max_prompt_tokens=7)
    assert env.action_space == gymnasium.spaces.Discrete(TOK.n_vocab)
    ids = env.observation_space["input_ids"]
    assert ids.shape == (12,) and ids.dtype == np.int64 and ids.high.max() == TOK.n_vocab - 1
    assert env.observation_space["attention_mask"].high.max() == 1
    assert env.stop_tokens == sorted([EOT, END])


# -------------------------------------------------------------------------------- padding, truncation
def test_observation_is_left_padded_with_newest_token_last():
    env = make(max_new_tokens=3, max_prompt_tokens=4)
    obs, info = env.reset(options={"prompt": "ab"})
    assert info == {"prompt": "ab", "completion": ""}
    assert obs["input_ids"].tolist() == [PAD] * 5 + [97, 98]
    assert obs["attention_mask"].tolist() == [0] * 5 + [1, 1]
    obs, *_ = env.step(ord("x"))
    assert obs["input_ids"].tolist() == [PAD] * 4 + [97, 98, 120]
    assert obs["attention_mask"].tolist() == [0] * 4 + [1, 1, 1]
    obs, *_ = env.step(ord("y"))
    assert obs["input_ids"].tolist() == [PAD] * 3 + [97, 98, 120, 121]


def test_long_prompts_are_left_truncated_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="rlfl.envs.text_env"):
        env = make(prompts=["0123456789", "tiny"], max_prompt_tokens=4, max_new_tokens=2)
    assert "1 of 2 prompts are longer than max_prompt_tokens=4" in caplog.text
    assert "left-truncated" in caplog.text and "'0123456789'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rlfl.envs.text_env"):
        obs, info = env.reset(options={"prompt": "abcdefg"})
        env.reset(options={"prompt": "abcdefg"})  # same text: warned once, not twice
    assert obs["input_ids"].tolist() == [PAD, PAD] + list(b"defg")  # the end, nearest the completion, is kept
    assert obs["attention_mask"].tolist() == [0, 0, 1, 1, 1, 1]
    assert info["prompt"] == "abcdefg"  # the info keeps the whole text
    assert caplog.text.count("left-truncated") == 1 and "'abcdefg' has 7 tokens" in caplog.text
    # A prompt drawn from the list is cut the same way.
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        if info["prompt"] == "0123456789":
            assert obs["input_ids"][-4:].tolist() == list(b"6789") and obs["attention_mask"].sum() == 4
            break
    else:
        pytest.fail("the long prompt was never drawn")


def test_chat_template_wraps_the_prompt_as_a_user_turn():
    env = make(prompts=["hi"], chat_template=True, max_prompt_tokens=8, max_new_tokens=2)
    obs, _ = env.reset(seed=0)
    expected = chat_prompt(TOK, [{"role": "user", "content": "hi"}])
    assert obs["input_ids"][-len(expected):].tolist() == expected
    assert obs["attention_mask"].sum() == len(expected)
    assert TOK.decode(expected) == "<|user|>hi<|end|><|assistant|>"


def test_empty_prompt_becomes_end_of_text():
    obs, _ = make(prompts=[""]).reset(seed=0)
    assert obs["input_ids"][-1] == EOT and obs["attention_mask"].sum() == 1


# ------------------------------------------------------------------------------- episodes and rewards
def test_stop_token_terminates_and_is_excluded_from_the_scored_text():
    reward = LengthReward()
    env = make(reward=reward, max_new_tokens=6)
    env.reset(options={"prompt": "Hi"})
    steps = run(env, list(b"ok") + [END, 65])
    assert len(steps) == 3
    rewards = [s[1] for s in steps]
    assert rewards == [0.0, 0.0, 2.0]  # reward only at the end; "ok" has 2 characters
    obs, _, terminated, truncated, info = steps[-1]
    assert (terminated, truncated) == (True, False)
    assert info == {"prompt": "Hi", "completion": "ok", "score": 2.0}
    assert obs["input_ids"][-1] == END  # the final observation does show the stop token
    assert steps[0][4] == {"prompt": "Hi", "completion": "o"}
    assert reward.calls == [(["Hi"], ["ok"])]


def test_max_new_tokens_truncates():
    env = make(max_new_tokens=3)
    env.reset(options={"prompt": "Hi"})
    steps = run(env, b"abcdef")
    assert len(steps) == 3 and [s[2:4] for s in steps] == [(False, False)] * 2 + [(False, True)]
    assert steps[-1][1] == 3.0 and steps[-1][4]["completion"] == "abc"
    with pytest.raises(gymnasium.error.ResetNeeded, match="call reset"):
        env.step(65)


def test_custom_stop_tokens_replace_the_defaults():
    env = make(stop_tokens=[ord(".")], max_new_tokens=8)
    env.reset(options={"prompt": "Hi"})
    steps = run(env, [EOT] + list(b"a.b"))
    assert len(steps) == 3 and steps[-1][2] is True
    assert steps[-1][4]["completion"] == "<|endoftext|>a"  # EOT is ordinary here; "." is not scored


def test_min_new_tokens_makes_an_early_stop_token_an_ordinary_one():
    reward = LengthReward()
    env = make(reward=reward, max_new_tokens=6, min_new_tokens=2)
    assert env.min_new_tokens == 2
    env.reset(options={"prompt": "Hi"})
    # a stop token as the first and second token goes on (kept in the text); as the third it ends the episode
    steps = run(env, [END, END, END, 65])
    assert [s[2:4] for s in steps] == [(False, False), (False, False), (True, False)]
    assert steps[-1][4]["completion"] == "<|end|><|end|>" and reward.calls[-1][1] == ["<|end|><|end|>"]
    env.reset(options={"prompt": "Hi"})
    steps = run(env, list(b"ab") + [END])  # two tokens already: a stop ends it, as without the option
    assert steps[-1][2] is True and steps[-1][4]["completion"] == "ab"
    # min_new_tokens == max_new_tokens: no stop token ever ends an episode
    env = make(max_new_tokens=3, min_new_tokens=3)
    env.reset(seed=0)
    steps = run(env, [END] * 5)
    assert len(steps) == 3 and [s[2:4] for s in steps][-1] == (False, True)
    for bad in (-1, 7, 1.5, True):
        with pytest.raises(ValueError, match=r"min_new_tokens must be an integer in \[0, max_new_tokens=6\]"):
            make(max_new_tokens=6, min_new_tokens=bad)


def test_no_stop_tokens_give_fixed_length_episodes():
    env = make(stop_tokens=[], max_new_tokens=5)
    assert env.stop_tokens == []
    for seed in range(3):
        env.reset(seed=seed)
        steps = run(env, [EOT, END, EOT, END, EOT, END])
        assert len(steps) == 5 and [s[2:4] for s in steps][-1] == (False, True)
        assert not any(s[2] for s in steps)
        assert steps[-1][4]["completion"] == "<|endoftext|><|end|><|endoftext|><|end|><|endoftext|>"


def test_reward_shaping_adds_a_term_after_every_token():
    seen = []

    def shaping(prompt, completion_ids):
        seen.append((prompt, completion_ids.tolist()))
        return -0.5

    env = make(reward_shaping=shaping, max_new_tokens=3)
    env.reset(options={"prompt": "Q"})
    steps = run(env, b"xyz")
    assert [s[1] for s in steps] == [-0.5, -0.5, 3.0 - 0.5]
    assert seen == [("Q", [120]), ("Q", [120, 121]), ("Q", [120, 121, 122])]


def test_nan_score_error_names_the_source_and_the_text():
    env = make(reward=ConstantReward(float("nan")), max_new_tokens=2)
    env.reset(options={"prompt": "Tell me\n" + "x" * 200})
    env.step(ord("o"))
    with pytest.raises(RewardError) as e:
        env.step(ord("k"))
    msg = str(e.value)
    assert "'broken-judge'" in msg and "nan" in msg and "'ok'" in msg
    assert "'Tell me\\nxxx" in msg and "..." in msg and "\n" not in msg  # one line, long text cut
    assert len(msg) < 400


def test_wrong_shape_and_non_numeric_scores_are_errors():
    env = make(reward=ConstantReward(lambda n: np.zeros(n + 1)), max_new_tokens=1)
    env.reset(seed=0)
    with pytest.raises(RewardError, match="reward source 'broken-judge' returned 2 scores for 1 completions"):
        env.step(65)

    class Texts:
        def score(self, prompts, completions):
            return ["good"] * len(completions)

    env = make(reward=Texts(), max_new_tokens=1)
    env.reset(seed=0)
    with pytest.raises(RewardError, match="reward source 'Texts' returned dtype <U4"):
        env.step(65)


def test_plain_callable_reward_is_adapted():
    env = make(reward=lambda prompt, completion: float(completion == "ok"), max_new_tokens=2)
    env.reset(seed=0)
    env.step(ord("o"))
    assert env.step(ord("k"))[1] == 1.0


# ------------------------------------------------------------------------------------ sources, seeding
def test_seeded_resets_repeat_the_prompt_draws():
    prompts = [f"prompt {i}" for i in range(50)]
    env = make(prompts=prompts)

    def draws(seed):
        first = env.reset(seed=seed)[1]["prompt"]
        return [first] + [env.reset()[1]["prompt"] for _ in range(9)]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


def test_prompt_source_with_sample_method():
    class Counter:
        def __init__(self):
            self.n = 0

        def sample(self, np_random):
            self.n += 1
            return f"#{int(np_random.integers(100))}"

    source = Counter()
    env = make(prompts=source)
    texts = [env.reset(seed=1)[1]["prompt"], env.reset()[1]["prompt"]]
    assert source.n == 2 and all(t.startswith("#") for t in texts)
    assert env.reset(seed=1)[1]["prompt"] == texts[0]


def test_render_modes(capsys):
    env = make(render_mode="ansi", max_new_tokens=2)
    env.reset(options={"prompt": "Hi"})
    env.step(ord("y"))
    assert env.render() == "prompt: Hi\ncompletion: y"
    human = make(render_mode="human", max_new_tokens=2)
    human.reset(options={"prompt": "Hi"})
    run(human, b"yo")
    assert capsys.readouterr().out == "prompt: Hi\ncompletion: yo\n"  # written once, at the episode's end


def test_bad_arguments_are_one_line_value_errors():
    with pytest.raises(ValueError, match="wrap a single prompt in a list"):
        make(prompts="just one")
    with pytest.raises(ValueError, match=r"prompts\[1\]: expected a string, got int"):
        make(prompts=["ok", 3])
    with pytest.raises(ValueError, match="the list is empty"):
        make(prompts=[])
    with pytest.raises(ValueError, match="cannot use 3 .int. as a reward"):
        make(reward=3)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive integer"):
        make(max_new_tokens=0)
    with pytest.raises(ValueError, match=r"stop_tokens: 9999 is not a token id in \[0, 262\)"):
        make(stop_tokens=[9999])
    with pytest.raises(ValueError, match="render_mode 'rgb_array' is not supported"):
        make(render_mode="rgb_array")
    env = make()
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step(65)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action 262 is not a token id in \[0, 262\)"):
        env.step(262)
    with pytest.raises(ValueError, match="unknown option 'prompts'; the only option is 'prompt'"):
        env.reset(options={"prompts": ["a"]})


def test_a_step_whose_reward_source_raises_leaves_the_env_as_it_was():
    class FailsOnce:
        def __init__(self) -> None:
            self.calls = 0

        def score(self, prompts, completions):
            self.calls += 1
            if self.calls == 1:
                raise ConnectionError("judge endpoint down")
            return np.array([len(c) for c in completions], dtype=np.float64)

    env = make(reward=FailsOnce(), max_new_tokens=2)
    env.reset(options={"prompt": "Q"})
    obs, *_ = env.step(ord("o"))
    with pytest.raises(ConnectionError):
        env.step(ord("k"))  # the last token: the completion is scored, and the source raises
    # retry: the token of the failed step was not kept, so the episode ends at max_new_tokens, not after it
    obs2, reward, terminated, truncated, info = env.step(ord("k"))
    assert truncated and not terminated and info["completion"] == "ok" and reward == 2.0
    assert env.unwrapped._batch.n_new[0] == 2
    np.testing.assert_array_equal(obs2["input_ids"][:-1], obs["input_ids"][1:])
