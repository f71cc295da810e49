"""The env registry and prompt sources: custom ids in a few lines, the built-in ids, env checkers, errors."""

from __future__ import annotations

import inspect
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import rlfl.envs.prompts as prompts_module
import rlfl.envs.registry as registry
from conftest import step_text

from rlfl.envs import (BUILTIN_IDS, CallableReward, GoldSentiment, PromptList, TextGenerationEnv,
                       TextGenerationVectorEnv, hh_prompts, imdb_prompts, register_reward_env,
                       synthetic_review_prompts)
from rlfl.envs.text_env import EpisodeBatch
from rlfl.synthetic import gold_sentiment
from rlfl.tokenizer import byte_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
EOT = byte_tokenizer().eot_id


def data_dir(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not available (../shared/data is absent in a fresh clone)")
    return path


def has_great(prompt: str, completion: str) -> float:
    return float("great" in completion)


@pytest.fixture
def fresh_id(request):
    """A unique id for this test, removed from the registry afterwards."""
    env_id = f"rlfltest/{request.node.name.replace('_', '').title()[:40]}-v0"
    yield env_id
    gymnasium.registry.pop(env_id, None)


def checked(env):
    """Run both env checkers on a made env (Gymnasium's on the unwrapped env, SB3's on the wrapped one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SB3 suggests normalising non-image Box observations: not for token ids
        gym_check_env(env.unwrapped)
        sb3_check_env(env)
    return env


# ------------------------------------------------------------------------------------- custom ids
def test_register_and_make_a_custom_env_in_a_few_lines(fresh_id):
    register_reward_env(fresh_id, reward=has_great, prompts=["The film was"], max_new_tokens=8)
    env = gymnasium.make(fresh_id)
    assert isinstance(env.unwrapped, TextGenerationEnv)
    obs, info = env.reset(seed=0)
    assert info["prompt"] == "The film was" and obs["input_ids"].shape == (32 + 8,)
    _, reward, terminated, truncated, info = step_text(env, " great")
    assert (reward, terminated, truncated, info["completion"]) == (1.0, True, False, " great")
    env.reset(seed=1)
    _, reward, terminated, truncated, info = step_text(env, " terrible", stop=False)  # 8 tokens: truncated
    assert (reward, terminated, truncated, info["completion"]) == (0.0, False, True, " terribl")
    assert env.unwrapped.gold_judge is None
    checked(env)


def test_spec_holds_plain_values_and_make_overrides_them(fresh_id):
    prompts = PromptList(["a", "b"])
    register_reward_env(fresh_id, reward=has_great, prompts=prompts, max_new_tokens=5, chat_template=False)
    spec = gymnasium.spec(fresh_id)
    # Objects stay out of the spec (Gymnasium deep-copies its kwargs on every make); plain values are there.
    assert spec.kwargs == {"tokenizer": "bytes", "max_new_tokens": 5, "max_prompt_tokens": 32, "chat_template": False}
    env = gymnasium.make(fresh_id, max_new_tokens=3, reward=lambda p, c: 2.0, max_prompt_tokens=4)
    env.reset(seed=0)
    _, reward, _, truncated, _ = step_text(env, "xyz", stop=False)
    assert reward == 2.0 and truncated and env.unwrapped.observation_space["input_ids"].shape == (7,)
    assert env.unwrapped.spec.kwargs["max_new_tokens"] == 3


def test_custom_env_with_a_reward_model_path_and_a_gold_judge(fresh_id, tmp_path):
    from test_rewards import tiny_reward_model

    path = tiny_reward_model(tmp_path / "rm")
    register_reward_env(fresh_id, reward=str(path), prompts=["Hi", "Yo"], gold=GoldSentiment(), max_new_tokens=4)
    assert gymnasium.spec(fresh_id).kwargs["reward"] == str(path)  # a path is a plain value: it is loaded at make
    env = gymnasium.make(fresh_id)
    env.reset(seed=0)
    _, reward, _, _, info = step_text(env, "abcd", stop=False)
    expected = env.unwrapped.reward.score([info["prompt"]], ["abcd"])[0]
    assert np.isfinite(reward) and reward == expected
    assert env.unwrapped.gold_judge.score(["x"], [" great"])[0] > 0


def test_make_vec_builds_one_batched_vector_env_with_one_reward_call_per_step(fresh_id):
    calls = []

    def batched(prompts, completions):
        calls.append(list(completions))
        return np.array([float(len(c)) for c in completions])

    register_reward_env(fresh_id, reward=CallableReward(batched, batched=True), prompts=["a", "b", "c"],
                        max_new_tokens=3)
    venv = gymnasium.make_vec(fresh_id, num_envs=6)
    assert isinstance(venv, TextGenerationVectorEnv) and venv.num_envs == 6
    venv.reset(seed=0)
    for _ in range(3):
        _, rewards, _, truncated, _ = venv.step(np.full(6, ord("x")))
    assert calls == [["xxx"] * 6] and rewards.tolist() == [3.0] * 6 and truncated.all()
    assert venv.unwrapped.gold_judge is None


def test_min_new_tokens_and_fixed_length_pass_through_make_and_the_registered_spec(fresh_id):
    register_reward_env(fresh_id, reward=lambda p, c: float(len(c)), prompts=["a"], max_new_tokens=4,
                        min_new_tokens=2)
    assert gymnasium.spec(fresh_id).kwargs["min_new_tokens"] == 2
    env = gymnasium.make(fresh_id)
    env.reset(seed=0)
    _, reward, terminated, _, info = step_text(env, "")  # <|endoftext|> first: an ordinary token under min_new_tokens
    assert not terminated and env.unwrapped.min_new_tokens == 2
    _, reward, terminated, _, info = step_text(env, "x")  # the second token; the stop after it ends the episode
    assert terminated and info["completion"] == "<|endoftext|>x"
    venv = gymnasium.make_vec(fresh_id, num_envs=3, min_new_tokens=0, stop_tokens=[])  # make's kwargs win
    assert venv.min_new_tokens == 0 and venv.stop_tokens == []
    venv.reset(seed=0)
    for _ in range(4):
        _, _, terminated, truncated, _ = venv.step(np.full(3, EOT))
    assert truncated.all() and not terminated.any()  # fixed length: <|endoftext|> ends nothing
    assert checked(gymnasium.make("rlfl/SyntheticReviews-v0", min_new_tokens=3)).unwrapped.min_new_tokens == 3


def test_vector_false_falls_back_to_gymnasium_sync_vector_env(fresh_id):
    register_reward_env(fresh_id, reward=has_great, prompts=["a"], vector=False)
    venv = gymnasium.make_vec(fresh_id, num_envs=2)
    assert isinstance(venv, gymnasium.vector.SyncVectorEnv) and venv.num_envs == 2


def test_reregistering_errors_unless_overwrite(fresh_id, caplog):
    register_reward_env(fresh_id, reward=has_great, prompts=["a"])
    with pytest.raises(ValueError, match=rf"env id '{fresh_id}' is already registered; pass overwrite=True to "
                                         rf"replace it, or register a new version such as '{fresh_id[:-1]}1'"):
        register_reward_env(fresh_id, reward=has_great, prompts=["a"])
    with caplog.at_level("WARNING", logger="rlfl.envs.registry"):
        register_reward_env(fresh_id, reward=lambda p, c: 7.0, prompts=["a"], max_new_tokens=1, overwrite=True)
    assert f"replacing the registered env {fresh_id}" in caplog.text
    with pytest.raises(ValueError, match="unknown keyword 'colour'"):  # a bad replacement keeps the old env
        register_reward_env(fresh_id, reward=has_great, prompts=["a"], colour="red", overwrite=True)
    env = gymnasium.make(fresh_id)
    env.reset(seed=0)
    assert env.step(ord("z"))[1] == 7.0


def test_register_errors_are_one_line_and_say_the_fix(fresh_id):
    with pytest.raises(ValueError, match=r"env id 'not an id!' is not a Gymnasium id; use 'namespace/Name-v0'"):
        register_reward_env("not an id!", reward=has_great, prompts=["a"])
    with pytest.raises(ValueError, match=r"unknown keyword 'max_new_token' \(did you mean 'max_new_tokens'\?\)"):
        register_reward_env(fresh_id, reward=has_great, prompts=["a"], max_new_token=3)
    with pytest.raises(ValueError, match=r"reward=3; pass a callable\(prompt, completion\) -> float"):
        register_reward_env(fresh_id, reward=3, prompts=["a"])
    with pytest.raises(ValueError, match="cannot use str as prompts: pass a list of prompt strings"):
        register_reward_env(fresh_id, reward=has_great, prompts="The film was")
    with pytest.raises(ValueError, match="no prompts; pass at least one prompt string"):
        register_reward_env(fresh_id, reward=has_great, prompts=[])
    assert fresh_id not in gymnasium.registry
    # At make time: a missing checkpoint and a bad tokenizer spec name what to pass.
    register_reward_env(fresh_id, reward="no/such/rm", prompts=["a"])
    with pytest.raises(FileNotFoundError, match="no/such/rm: no such reward-model checkpoint directory"):
        gymnasium.make(fresh_id)
    with pytest.raises(ValueError, match="unknown tokenizer 'nope'"):
        gymnasium.make(fresh_id, reward=has_great, tokenizer="nope")


def test_env_options_match_the_env_signatures():
    def keyword_only(function):
        params = inspect.signature(function).parameters.values()
        return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}

    episode_options = keyword_only(EpisodeBatch.__init__) - {"num_rows"}
    assert keyword_only(TextGenerationEnv.__init__) | episode_options == set(registry.ENV_OPTIONS)
    assert keyword_only(TextGenerationVectorEnv.__init__) | episode_options == set(registry.ENV_OPTIONS) | {"num_envs"}


# ------------------------------------------------------------------------------------- built-in ids
def test_builtin_ids_are_registered_with_string_entry_points():
    for env_id in BUILTIN_IDS:
        spec = gymnasium.spec(env_id)
        assert spec.entry_point.startswith("rlfl.envs.registry:") and spec.vector_entry_point
        spec.to_json()  # JSON-able: nothing but plain values in the spec


def test_import_is_light_and_synthetic_reviews_needs_no_data(tmp_path):
    code = ("import sys, gymnasium, rlfl.envs\n"
            "assert 'torch' not in sys.modules, 'import rlfl.envs pulled in torch'\n"
            "env = gymnasium.make('rlfl/SyntheticReviews-v0')\n"
            "obs, info = env.reset(seed=0)\n"
            "print(info['prompt'])\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip()


def test_synthetic_reviews_passes_both_checkers_and_rewards_gold_sentiment():
    env = checked(gymnasium.make("rlfl/SyntheticReviews-v0"))
    env.reset(seed=0, options={"prompt": "The food was"})
    _, reward, terminated, _, _ = step_text(env, " great.")
    assert terminated and reward == pytest.approx(gold_sentiment("The food was great.")) and reward > 0.5
    env.reset(seed=0, options={"prompt": "The food was"})
    assert step_text(env, " awful.")[1] < -0.5
    # Seeded: the same seed draws the same prompt.
    assert env.reset(seed=5)[1]["prompt"] == env.reset(seed=5)[1]["prompt"]


def test_synthetic_reviews_gold_judge_scores_positive_above_negative():
    judge = gymnasium.make("rlfl/SyntheticReviews-v0").unwrapped.gold_judge
    pos, neg = judge.score(["The soup was"] * 2, [" really delicious and the staff were lovely.",
                                                   " cold and the waiter was rude."])
    assert pos > 0 > neg
    assert judge.name == "gold_sentiment"


def test_synthetic_reviews_reward_override_keeps_the_gold_judge(tmp_path):
    env = gymnasium.make("rlfl/SyntheticReviews-v0", reward=lambda p, c: -1.0, max_new_tokens=2, n_prompts=10)
    env.reset(seed=0)
    assert step_text(env, "ab", stop=False)[1] == -1.0
    assert isinstance(env.unwrapped.gold_judge, GoldSentiment)
    from test_rewards import tiny_reward_model

    path = tiny_reward_model(tmp_path / "rm")
    env = gymnasium.make("rlfl/SyntheticReviews-v0", reward=str(path), max_new_tokens=2)
    assert type(env.unwrapped.reward).__name__ == "RewardModelScorer"
    env.reset(seed=0)
    assert np.isfinite(step_text(env, "ab", stop=False)[1])


def test_synthetic_reviews_make_vec():
    venv = gymnasium.make_vec("rlfl/SyntheticReviews-v0", num_envs=4, max_new_tokens=3)
    assert isinstance(venv, TextGenerationVectorEnv) and isinstance(venv.unwrapped.gold_judge, GoldSentiment)
    obs, info = venv.reset(seed=0)
    assert obs["input_ids"].shape == (4, 48 + 3) and len(set(info["prompts"])) > 1
    for _ in range(3):
        _, rewards, _, truncated, info = venv.step(np.full(4, ord("!")))
    assert truncated.all() and rewards.shape == (4,)
    np.testing.assert_allclose(rewards, GoldSentiment().score(list(info["prompts"]), ["!!!"] * 4))


def test_imdb_positive_passes_both_checkers_with_shared_data():
    path = data_dir("imdb")
    env = checked(gymnasium.make("rlfl/ImdbPositive-v0", data_path=str(path), split="test", n_prompts=200,
                                 reward=has_great))
    env.reset(seed=0)
    assert step_text(env, " great")[1] == 1.0
    venv = gymnasium.make_vec("rlfl/ImdbPositive-v0", num_envs=3, data_path=str(path), split="test", n_prompts=200,
                              reward=has_great)
    assert venv.reset(seed=0)[0]["input_ids"].shape == (3, 64 + 48)


def test_helpful_passes_both_checkers_with_shared_data():
    path = data_dir("hh-rlhf")
    env = checked(gymnasium.make("rlfl/Helpful-v0", data_path=str(path), n_prompts=100,
                                 reward=lambda p, c: float(len(c))))
    _, info = env.reset(seed=0)
    assert info["prompt"].startswith("\n\nHuman: ") and info["prompt"].endswith("\n\nAssistant:")
    venv = gymnasium.make_vec("rlfl/Helpful-v0", num_envs=2, data_path=str(path), n_prompts=100,
                              reward=has_great)
    assert venv.num_envs == 2


def test_builtin_missing_kwargs_say_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match=r"^rlfl/ImdbPositive-v0 needs a reward: pass reward='path/to/reward-model'"):
        gymnasium.make("rlfl/ImdbPositive-v0")
    with pytest.raises(ValueError, match=r"^rlfl/Helpful-v0 needs a reward: pass reward="):
        gymnasium.make("rlfl/Helpful-v0", data_path="x")
    with pytest.raises(ValueError, match=r"^rlfl/Helpful-v0 needs HH-RLHF dialogues: pass data_path="):
        gymnasium.make("rlfl/Helpful-v0", reward=has_great)
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such file or folder \(HH-RLHF data_path\)"):
        gymnasium.make("rlfl/Helpful-v0", reward=has_great, data_path=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such file or folder \(IMDB data_path\)"):
        gymnasium.make("rlfl/ImdbPositive-v0", reward=has_great, data_path=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"^rlfl/SyntheticReviews-v0: unknown keyword 'max_new_token' \(did you mean "
                                         r"'max_new_tokens'\?\); accepted: "):
        gymnasium.make("rlfl/SyntheticReviews-v0", max_new_token=4)
    with pytest.raises(ValueError, match=r"unknown keyword 'data_pth' \(did you mean 'data_path'\?\)"):
        gymnasium.make("rlfl/Helpful-v0", reward=has_great, data_pth="x")


def test_unknown_and_misspelt_ids_get_gymnasium_suggestions():
    with pytest.raises(gymnasium.error.NameNotFound, match="Did you mean: `SyntheticReviews`"):
        gymnasium.make("rlfl/SyntheticReview-v0")
    with pytest.raises(gymnasium.error.NameNotFound, match="Environment `Unknown` doesn't exist in namespace rlfl"):
        gymnasium.make("rlfl/Unknown-v0")
    with pytest.raises(gymnasium.error.NamespaceNotFound, match="Did you mean: `rlfl`"):
        gymnasium.make("rlff/SyntheticReviews-v0")
    with pytest.raises(gymnasium.error.VersionNotFound, match="provides versioned environments: \\[ `v0` \\]"):
        gymnasium.make("rlfl/Helpful-v3")


# ------------------------------------------------------------------------------------- prompt sources
def test_prompt_list_is_a_seeded_sequence():
    p = PromptList(["a", "b", "c"])
    assert len(p) == 3 and p[1] == "b" and list(p) == ["a", "b", "c"] and p[1:] == ["b", "c"]
    draws = [p.sample(np.random.default_rng(7)) for _ in range(2)]
    assert draws[0] == draws[1]
    assert {p.sample(np.random.default_rng(s)) for s in range(30)} == {"a", "b", "c"}
    with pytest.raises(ValueError, match="prompt 1 is int, not str"):
        PromptList(["a", 3])


def test_synthetic_review_prompts_are_varied_first_words():
    prompts = synthetic_review_prompts(300, seed=0)
    assert len(prompts) == 300 and prompts[:] == synthetic_review_prompts(300, seed=0)[:]
    lengths = [len(t.split()) for t in prompts]
    assert min(lengths) == 2 and max(lengths) == 6 and len(set(prompts)) > 150
    assert synthetic_review_prompts(300, seed=1)[:] != prompts[:]
    assert all(len(t.split()) == 1 for t in synthetic_review_prompts(20, words=(1, 1)))
    with pytest.raises(ValueError, match=r"words=\(3, 2\); pass \(min, max\) with 1 <= min <= max"):
        synthetic_review_prompts(5, words=(3, 2))


def test_imdb_prompts_from_shared_data():
    path = data_dir("imdb")
    prompts = imdb_prompts(path, split="test", n=500, seed=0)
    assert len(prompts) == 500 and all(2 <= len(t.split()) <= 8 for t in prompts)
    assert not any("<br" in t for t in prompts)  # cleaned with rlfl.data.clean_text
    assert imdb_prompts(path / "imdb_test.jsonl.gz", split="test", n=500, seed=0)[:] == prompts[:]
    with pytest.raises(ValueError, match="split='dev'; pass 'train' or 'test'"):
        imdb_prompts(path, split="dev")


def test_imdb_prompts_from_an_aclimdb_tree(tmp_path):
    for split, pol, text in [("train", "pos", "A <br />great film, truly one of a kind."),
                             ("test", "neg", "Dull dull dull and more dull.")]:
        d = tmp_path / "aclImdb" / split / pol
        d.mkdir(parents=True)
        (d / "0_9.txt").write_text(text)
    prompts = imdb_prompts(tmp_path / "aclImdb", split="train", words=(3, 3))
    assert prompts[:] == ["A great film,"]
    assert imdb_prompts(tmp_path / "aclImdb", split="test", words=(2, 2))[:] == ["Dull dull"]


def test_hh_prompts_from_shared_data():
    path = data_dir("hh-rlhf")
    prompts = hh_prompts(path)
    assert len(prompts) == 2354
    assert all(t.startswith("\n\nHuman: ") and t.endswith("\n\nAssistant:") for t in prompts)
    assert len(hh_prompts(path, subsets=prompts_module.HH_SUBSETS)) == 2354 + 1137 + 2749 + 2312
    assert len(hh_prompts(path / "harmless-base")) == 2312
    assert len(hh_prompts(path, subsets="harmless-base", n=10)) == 10


def test_hh_prompts_cut_at_the_last_assistant_turn_and_report_bad_lines(tmp_path):
    import gzip
    import json

    f = tmp_path / "test.jsonl.gz"
    rows = [{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant: See you", "rejected": "x"},
            {"chosen": "\n\nHuman: no answer here", "rejected": "y"}]
    f.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    assert hh_prompts(f)[:] == ["\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant:"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b"}\n{"rejected": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: no string field 'chosen'"):
        hh_prompts(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/helpful-base/test.jsonl.gz: no such file; pass data_path= "
                                                r"the hh-rlhf folder"):
        hh_prompts(tmp_path / "empty")


# ------------------------------------------------------------------------------------- the example
def test_custom_reward_env_example_runs():
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_reward_env.py"), "--episodes", "2",
                        "--max-new-tokens", "6", "--num-envs", "3"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert "== custom/Enthusiastic-v0" in out and out.count("  prompt '") >= 2
    assert "== custom/RewardModel-v0" in out or "skipping the reward-model env" in out
    assert "vector env, 3 rows x 6 steps: 1 reward call(s) scoring 3 completions" in out
