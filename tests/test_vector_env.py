"""TextGenerationVectorEnv: one reward call per step, SAME_STEP autoreset, seeding, equality with the single env."""

from __future__ import annotations


import gymnasium
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from rlfl.envs.prompts import PromptList
from rlfl.envs.rewards import RewardError
from rlfl.envs.text_env import TextGenerationEnv
from rlfl.envs.vector_env import TextGenerationVectorEnv
from rlfl.tokenizer import byte_tokenizer

TOK = byte_tokenizer()
PAD, EOT, END = TOK.pad_id, TOK.eot_id, TOK.special_tokens["<|end|>"]
PROMPTS = ["The film was", "I think", "Service here is", "Honestly,", "", "a much longer prompt than fits"]
KW = dict(max_new_tokens=4, max_prompt_tokens=12)


class RecordingReward:
    """A reward source that scores a completion by its length and records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []

    def score(self, prompts, completions):
        assert isinstance(prompts, list) and isinstance(completions, list)
        self.calls.append((prompts, completions))
        return np.array([len(c) + 0.25 * len(p) for p, c in zip(prompts, completions)])


def make(num_envs=5, reward=None, prompts=PROMPTS, **kw) -> TextGenerationVectorEnv:
    return TextGenerationVectorEnv(TOK, prompts, reward if reward is not None else RecordingReward(),
                                   num_envs=num_envs, **{**KW, **kw})


def random_actions(rng: np.random.Generator, n: int) -> np.ndarray:
    """Letters, with a stop token one time in five, so rows finish at different steps."""
    letters = rng.integers(97, 123, size=n)
    stops = rng.choice([EOT, END], size=n)
    return np.where(rng.random(n) < 0.2, stops, letters)


def test_spaces_and_metadata():
    env = make(num_envs=3)
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert env.single_action_space == gymnasium.spaces.Discrete(TOK.n_vocab)
    assert env.action_space == gymnasium.spaces.MultiDiscrete([TOK.n_vocab] * 3)
    assert env.single_observation_space["input_ids"].shape == (16,)
    assert env.observation_space["input_ids"].shape == (3, 16)
    obs, info = env.reset(seed=0)
    assert obs in env.observation_space and info["reset_rows"].all()
    obs, *_ = env.step(env.action_space.sample())
    assert obs in env.observation_space


def test_one_reward_call_per_step_with_exactly_the_finished_rows():
    reward = RecordingReward()
    env = make(num_envs=6, reward=reward)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    n_calls = 0
    for _ in range(40):
        prompts_before = env.current_prompts
        _, rewards, terminated, truncated, info = env.step(random_actions(rng, 6))
        done = np.flatnonzero(terminated | truncated)
        if done.size == 0:
            assert len(reward.calls) == n_calls and not rewards.any()
            continue
        n_calls += 1
        assert len(reward.calls) == n_calls
        prompts, completions = reward.calls[-1]
        assert prompts == [prompts_before[i] for i in done]
        assert completions == info["completions"][done].tolist()
        assert np.array_equal(rewards[done], info["scores"][done])
        not_done = np.setdiff1d(np.arange(6), done)
        assert not rewards[not_done].any() and (info["completions"][not_done] == "").all()
    assert n_calls >= 10 and max(len(c[1]) for c in reward.calls) > 1  # batching really happened


def test_same_step_autoreset_returns_final_obs_and_restarts_rows():
    env = make(num_envs=3, max_new_tokens=3)
    env.reset(options={"prompts": ["ab", "cd", "ef"]})
    env.step(np.array([120, 120, 120]))
    obs, rewards, terminated, truncated, info = env.step(np.array([EOT, 121, 121]))
    # Row 0 stopped: terminal reward, final obs with the stop token, and a fresh episode in the obs.
    assert terminated.tolist() == [True, False, False] and not truncated.any()
    assert info["reset_rows"].tolist() == [True, False, False] and info["_final_obs"].tolist() == [True, False, False]
    final = info["final_obs"][0]
    assert final["input_ids"][-4:].tolist() == [97, 98, 120, EOT] and final["attention_mask"].sum() == 4
    assert info["final_obs"][1] is None
    assert info["completions"].tolist() == ["x", "", ""] and info["prompts"].tolist() == ["ab", "", ""]
    assert rewards.tolist() == [1.5, 0.0, 0.0] and info["episode_reward"][0] == 1.5
    assert info["episode_length"].tolist() == [2, 0, 0]
    new_prompt = env.current_prompts[0]
    assert new_prompt in PROMPTS and env.completion_lengths.tolist() == [0, 2, 2]
    n_prompt = int(obs["attention_mask"][0].sum())
    assert TOK.decode(obs["input_ids"][0, -n_prompt:]) == (new_prompt[-12:] or "<|endoftext|>")
    assert (obs["input_ids"][0, :-n_prompt] == PAD).all()
    # Rows 1 and 2 carry on, then truncate at 3 tokens; row 0 is one token into its new episode.
    obs, rewards, terminated, truncated, info = env.step(np.array([65, 122, 122]))
    assert truncated.tolist() == [False, True, True] and info["reset_rows"].tolist() == [False, True, True]
    assert info["completions"].tolist() == ["", "xyz", "xyz"] and rewards.tolist() == [0.0, 3.5, 3.5]
    assert obs["input_ids"][0, -1] == 65 and env.completion_lengths.tolist() == [1, 0, 0]


def test_group_reset_hands_each_drawn_prompt_to_consecutive_rows():
    env = make(num_envs=6, prompts=[f"prompt {i}" for i in range(50)])
    obs, info = env.reset(seed=3, options={"group_size": 3})
    groups = np.asarray(info["prompts"]).reshape(2, 3)
    assert (groups == groups[:, :1]).all() and groups[0, 0] != groups[1, 0]
    assert (obs["input_ids"].reshape(2, 3, -1) == obs["input_ids"].reshape(2, 3, -1)[:, :1]).all()
    # seeded like any reset: the same seed draws the same groups
    assert make(num_envs=6, prompts=[f"prompt {i}" for i in range(50)]).reset(
        seed=3, options={"group_size": 3})[1]["prompts"].tolist() == info["prompts"].tolist()
    assert len(set(env.reset(options={"group_size": 1})[1]["prompts"].tolist())) > 1


@pytest.mark.parametrize("options, message", [
    ({"group_size": 4}, "must be a whole number >= 1 that divides num_envs=6"),
    ({"group_size": 0}, "must be a whole number >= 1"),
    ({"group_size": True}, "must be a whole number >= 1"),
    ({"group_size": 2, "prompts": ["a"] * 6}, "pass 'prompts' or 'group_size', not both"),
    ({"groups": 2}, "unknown option 'groups'; the options are 'prompts', 'group_size'"),
])
def test_bad_group_reset_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        make(num_envs=6).reset(options=options)


def test_episode_reward_includes_shaping():
    env = make(num_envs=2, max_new_tokens=2, reward_shaping=lambda prompt, ids: 0.1 * len(ids))
    env.reset(options={"prompts": ["", "ab"]})
    _, r1, *_ = env.step(np.array([120, 120]))
    _, r2, _, truncated, info = env.step(np.array([120, 120]))
    assert np.allclose(r1, 0.1) and truncated.all()
    assert np.allclose(r2, [0.2 + 2.0, 0.2 + 2.5]) and np.allclose(info["episode_reward"], r1 + r2)


def test_seeding_repeats_prompt_draws_and_autoresets():
    def rollout(seed):
        env = make(num_envs=4)
        obs, info = env.reset(seed=seed)
        trace = [obs["input_ids"].copy()]
        rng = np.random.default_rng(1)
        for _ in range(12):
            obs, *_ = env.step(random_actions(rng, 4))
            trace.append(obs["input_ids"].copy())
        return np.stack(trace)

    assert np.array_equal(rollout(7), rollout(7))
    assert not np.array_equal(rollout(7), rollout(8))


@pytest.mark.parametrize("options", [{}, {"min_new_tokens": 2}, {"stop_tokens": []}])
def test_rows_replay_exactly_in_the_single_env(options):
    """Every episode a vector row plays equals the single env's episode with the same prompt and tokens."""
    n = 5
    env = make(num_envs=n, **options)
    obs, info = env.reset(seed=3)
    rng = np.random.default_rng(3)
    current = [{"prompt": info["prompts"][i], "first": {k: v[i] for k, v in obs.items()}, "steps": []}
               for i in range(n)]
    episodes = []
    for _ in range(30):
        actions = random_actions(rng, n)
        obs, rewards, terminated, truncated, info = env.step(actions)
        for i in range(n):
            done = bool(terminated[i] or truncated[i])
            row_obs = info["final_obs"][i] if done else {k: v[i] for k, v in obs.items()}
            current[i]["steps"].append((int(actions[i]), row_obs, rewards[i], bool(terminated[i]), bool(truncated[i])))
            if done:
                current[i]["completion"] = info["completions"][i]
                episodes.append(current[i])
                current[i] = {"prompt": env.current_prompts[i], "first": {k: v[i] for k, v in obs.items()}, "steps": []}
    assert len(episodes) >= 20

    single = TextGenerationEnv(TOK, PROMPTS, RecordingReward(), **KW, **options)
    for ep in episodes:
        obs, info = single.reset(options={"prompt": ep["prompt"]})
        assert all(np.array_equal(obs[k], ep["first"][k]) for k in obs)
        for action, v_obs, v_reward, v_term, v_trunc in ep["steps"]:
            obs, reward, term, trunc, info = single.step(action)
            assert all(np.array_equal(obs[k], v_obs[k]) for k in obs)
            assert (reward, term, trunc) == (v_reward, v_term, v_trunc)
        assert info["completion"] == ep["completion"] and (term or trunc)


@pytest.mark.parametrize("options", [{"min_new_tokens": 2}, {"stop_tokens": []}])
def test_min_new_tokens_and_no_stop_tokens_bound_every_row_s_episode_lengths(options):
    env = make(num_envs=6, **options, max_new_tokens=5)
    assert env.min_new_tokens == options.get("min_new_tokens", 0)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    lengths, stopped = [], []
    for _ in range(40):
        actions = np.where(rng.random(6) < 0.5, END, 97)  # a stop token every other step
        _, _, terminated, truncated, info = env.step(actions)
        done = terminated | truncated
        lengths += (info["episode_length"][done] - terminated[done]).tolist()  # tokens, a final stop excluded
        stopped += terminated[done].tolist()
    if options.get("stop_tokens") == []:
        assert set(lengths) == {5} and not any(stopped)  # every episode runs max_new_tokens
    else:
        assert min(lengths) == 2 and any(stopped)  # never shorter, and stops after that still end episodes


def test_a_failed_step_leaves_the_env_as_it_was():
    class Nan:
        def score(self, prompts, completions):
            return np.where(np.array([c == "bad" for c in completions]), np.nan, 1.0)

    env = make(num_envs=2, reward=Nan(), max_new_tokens=3)
    env.reset(options={"prompts": ["p0", "p1"]})
    for t in b"ba":
        obs, *_ = env.step(np.array([t, t]))
    with pytest.raises(RewardError, match=r"'Nan' returned nan for completion 0 of 2 \(and 1 more\): prompt 'p0', completion 'bad'"):
        env.step(np.array([ord("d"), ord("d")]))
    again = env.unwrapped._batch.observation()  # the token of the failed step was taken back
    assert all(np.array_equal(again[k], obs[k]) for k in obs)
    _, rewards, _, truncated, info = env.step(np.array([ord("g"), ord("g")]))  # the episode goes on from there
    assert truncated.all() and list(info["completions"]) == ["bag", "bag"] and rewards.tolist() == [1.0, 1.0]


def test_bad_actions_and_options():
    env = make(num_envs=3)
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step(np.zeros(3, dtype=np.int64))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"expected 3 integer token id\(s\), got dtype int64 shape \(2,\)"):
        env.step(np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="got dtype float64"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match=r"action -1 is not a token id"):
        env.step(np.array([0, -1, 0]))
    with pytest.raises(ValueError, match="expected a list of 3 strings, one per row"):
        env.reset(options={"prompts": ["a", "b"]})
    with pytest.raises(ValueError, match="unknown option 'prompt'"):
        env.reset(options={"prompt": "a"})


def test_render_ansi_lists_every_row():
    env = make(num_envs=2, render_mode="ansi")
    env.reset(options={"prompts": ["A", "B"]})
    env.step(np.array([120, 121]))
    assert env.render() == ("prompt: A\ncompletion: x", "prompt: B\ncompletion: y")


def test_prompt_sources_list_promptlist_and_sampler():
    def first_obs(prompts):
        return make(num_envs=4, prompts=prompts).reset(seed=11)[0]["input_ids"]

    # A PromptList draws uniformly like a list, so it takes the same pre-encoded path and the same draws.
    assert np.array_equal(first_obs(PROMPTS), first_obs(PromptList(PROMPTS)))

    class Numbered:
        def sample(self, np_random):
            return f"n{int(np_random.integers(1000))}"

    env = make(num_envs=4, prompts=Numbered(), max_new_tokens=1)
    _, info = env.reset(seed=0)
    assert all(p.startswith("n") for p in info["prompts"])
    _, _, _, truncated, info = env.step(np.full(4, 65))
    assert truncated.all() and all(p.startswith("n") for p in env.current_prompts)
