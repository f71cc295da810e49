"""rlfl.agents: the KV-cached actor, rollout segments, GAE, KL control, length-collapse remedies, PPO learning,
save/load, SB3's own PPO."""

from __future__ import annotations


import gymnasium
import numpy as np
import pytest
import rlfl.envs
import torch
from rlfl.agents import (
    PPO,
    TextVecEnv,
    TransformerPolicy,
    make_text_vec_env,
)
from rlfl.agents.rollout import CachedActor, pack_rows
from rlfl.agents.schedules import LRSchedule
from stable_baselines3.common.callbacks import BaseCallback

from rlfl.checkpoint import load_checkpoint, save_checkpoint
from rlfl.model import GPT, GPTConfig
from conftest import learn_with_frozen_reference, lower_share, one
from rlfl.tokenizer import train_bpe

PROMPTS = ["The film was", "Dinner was", "I think", "Our hotel room", "My dog"]
RAGGED_STOPS = list(range(96, 128))





def env_id(name: str, reward=lower_share, **kwargs) -> str:
    full = f"test/{name}-v0"
    options = {"max_new_tokens": 8, "max_prompt_tokens": 16, **kwargs}
    rlfl.envs.register_reward_env(full, reward=reward, prompts=PROMPTS, overwrite=True, **options)
    return full


def ragged_env(reward=lower_share) -> str:
    # an eighth of the vocabulary stops an episode: episodes end at scattered steps (rows restart at
    # different times), and some still run out of tokens
    return env_id("Ragged", reward=reward, stop_tokens=RAGGED_STOPS)


def collect(model: PPO) -> None:
    """One rollout without training (what learn() does first)."""
    _, callback = model._setup_learn(model.n_steps * model.n_envs, None)
    assert model.collect_rollouts(model.env, callback, None, model.n_steps)


# ---------------------------------------------------------------------------------------------- rollouts
def test_cached_actor_matches_a_full_forward_of_every_observation(policy_dir):
    model = PPO(policy_dir, ragged_env(), n_envs=6, n_steps=4, seed=0)
    env = model.env
    obs = env.reset()
    actor = CachedActor(model.policy, env.num_envs, env.max_prompt_tokens, env.max_new_tokens,
                        env.tokenizer.pad_id, torch.device("cpu"))
    actor.load(obs, env.completion_lengths())
    restarts, worst = 0, 0.0
    for _ in range(40):
        with torch.no_grad():
            full = model.policy.get_distribution({k: torch.as_tensor(v) for k, v in obs.items()}).distribution.logits
            values = model.policy.predict_values({k: torch.as_tensor(v) for k, v in obs.items()})[:, 0]
        worst = max(worst, (torch.log_softmax(actor.logits, -1) - full).abs().max().item())
        torch.testing.assert_close(actor.values, values, atol=1e-5, rtol=0)
        actions, _ = actor.sample()
        actor.append(actions.numpy())
        obs, _, dones, _ = env.step(actions.numpy())
        actor.advance(actions, dones, obs)
        restarts += int(dones.sum())
        assert (actor.n == env.completion_lengths()).all()
    assert worst < 1e-4
    assert restarts > 20  # the check covered many staggered restarts


def test_segments_tile_the_rollout_and_one_forward_per_sequence_reproduces_the_logprobs(policy_dir):
    model = PPO(policy_dir, ragged_env(), n_envs=5, n_steps=12, seed=1)
    collect(model)
    store = model._store
    assert store.num_segments > store.num_rows  # episodes ended mid-rollout
    b = store.batch(np.arange(store.num_segments), torch.device("cpu"))
    assert len(b.cells) == 5 * 12
    # short segments share rows (packed), and each still reads exactly its own tokens
    assert b.segment_ids is not None and len(b.tokens) < store.num_segments
    assert b.mask.sum() < store.seg_masks.sum()  # the prompt window's left padding is gone
    with torch.no_grad():
        logp, _, values = model.policy.sequence_outputs(b.tokens, b.mask, b.positions, b.actions,
                                                        **b.layout)
    cells = b.cells.numpy()
    np.testing.assert_allclose(logp.numpy(), store.logp.reshape(-1)[cells], atol=2e-5)
    np.testing.assert_allclose(values.numpy(), store.values.reshape(-1)[cells], atol=2e-5)


def test_pack_rows_places_every_segment_once_without_overlap():
    rng = np.random.default_rng(0)
    for _ in range(50):
        lengths = rng.integers(1, 60, size=rng.integers(1, 40))
        row, offset, n_rows = pack_rows(lengths)
        width = lengths.max()
        assert (offset >= 0).all() and (offset + lengths <= width).all()
        used = np.zeros((n_rows, width), int)
        for r, o, n in zip(row, offset, lengths):
            used[r, o:o + n] += 1
        assert used.max() == 1 and used.sum() == lengths.sum()
        assert n_rows >= -(-lengths.sum() // width) and n_rows <= len(lengths)
    assert pack_rows(np.array([5, 2, 3]))[2] == 2 and pack_rows(np.array([4, 4, 4]))[2] == 3


def test_bfloat16_rollout_logprobs_match_the_training_forward_so_they_are_the_old_policy(policy_dir):
    # on a CPU the KV cache and attention stay float32 under bfloat16 autocast, so the cached decode and
    # the whole-sequence forward differ only by bf16 matmul rounding: PPO uses the rollout's log-probs
    model = PPO(policy_dir, ragged_env(), n_envs=5, n_steps=12, precision="bfloat16", seed=1)
    collect(model)
    store = model._store
    assert model._actor.cache.k.dtype == torch.float32
    b = store.batch(np.arange(store.num_segments), torch.device("cpu"))
    with torch.no_grad(), model._autocast():
        logp, _, values = model.policy.sequence_outputs(b.tokens, b.mask, b.positions, b.actions,
                                                        **b.layout)
    with torch.no_grad():
        logp32, _, _ = model.policy.sequence_outputs(b.tokens, b.mask, b.positions, b.actions,
                                                     **b.layout)
    cells = b.cells.numpy()
    assert np.abs(logp.numpy() - logp32.numpy()).max() > 1e-4  # bfloat16 really computed ...
    assert np.abs(logp.numpy() - store.logp.reshape(-1)[cells]).max() < 0.02  # ... and the rollout agrees
    np.testing.assert_allclose(values.numpy(), store.values.reshape(-1)[cells], atol=0.02)
    # mark the rollout's figures: a recompute would replace them with the forward's, which lack the mark
    store.logp += 0.5
    store.values += 0.5
    _, old_logp, old_values = model._forward_pass(store)
    np.testing.assert_array_equal(old_logp, store.logp)  # not recomputed: the rollout's own
    np.testing.assert_array_equal(old_values, store.values)


def test_the_reward_lands_on_the_last_token_and_the_no_stop_penalty_only_on_unfinished_completions(policy_dir):
    model = PPO(policy_dir, ragged_env(reward=one), n_envs=6, n_steps=12, no_stop_penalty=-0.25, seed=2)
    collect(model)
    store = model._store
    np.testing.assert_array_equal(store.rewards, store.dones.astype(np.float32))
    shaped = model._shaped_rewards(store)
    stopped, ran_out = store.dones & store.stopped, store.dones & ~store.stopped
    assert stopped.any() and ran_out.any()
    assert (shaped[stopped] == 1.0).all() and (shaped[ran_out] == 0.75).all() and (shaped[~store.dones] == 0).all()
    # a stopped episode's last token (the action at its done cell) is a stop token
    assert set(store.actions[stopped].tolist()) <= set(RAGGED_STOPS)



def test_the_short_penalty_lands_on_exactly_the_completions_shorter_than_short_tokens(policy_dir):
    model = PPO(policy_dir, ragged_env(reward=one), n_envs=6, n_steps=12, no_stop_penalty=-0.25, short_penalty=-0.5,
                short_tokens=3, seed=2)
    collect(model)
    store = model._store
    ended = store.dones
    # the env's lengths (a final stop token not counted) agree with the actor's segments
    for s in np.flatnonzero(ended[store.seg_t0 + store.seg_n - store.seg_j0 - 1, store.seg_row]):
        t, r = store.seg_t0[s] + store.seg_n[s] - store.seg_j0[s] - 1, store.seg_row[s]
        assert store.lengths[t, r] == store.seg_n[s] - store.stopped[t, r]
    short = ended & (store.lengths < 3)
    assert (store.lengths[ended] == 0).any() and (ended & ~short).any()  # empty ones among the short ones
    expected = ended * 1.0 - 0.25 * (ended & ~store.stopped) - 0.5 * short
    np.testing.assert_array_equal(model._shaped_rewards(store), expected)


def test_min_new_tokens_bans_early_stops_and_the_training_forwards_apply_the_same_ban(policy_dir):
    # an eighth of the vocabulary stops an episode: without the ban a third of the completions would be 0-2 tokens
    model = PPO(policy_dir, env_id("MinNew", stop_tokens=RAGGED_STOPS, min_new_tokens=5), n_envs=8, n_steps=24,
                batch_size=64, learning_rate=0.0, seed=0)
    assert model.env.min_new_tokens == 5
    collect(model)
    store = model._store
    ended = store.dones
    assert ended.sum() >= 16 and store.stopped[ended].any()
    assert store.lengths[ended].min() == 5  # none shorter, and some stop as soon as they may
    assert not set(store.act_tok[store.act_early].tolist()) & set(RAGGED_STOPS)
    assert set(store.act_tok[~store.act_early].tolist()) & set(RAGGED_STOPS)
    # the training forward under the same ban reproduces the sampled log-probs: the first epoch's ratio is 1
    b = store.batch(np.arange(store.num_segments), torch.device("cpu"))
    assert b.early is not None and b.early.any() and not b.early.all()
    with torch.no_grad():
        logp, _, _ = model.policy.sequence_outputs(b.tokens, b.mask, b.positions, b.actions, entropy="grad",
                                                   **b.layout)
        unbanned, _, _ = model.policy.sequence_outputs(b.tokens, b.mask, b.positions, b.actions,
                                                       segment_ids=b.segment_ids, branch_ids=b.branch_ids)
    rollout_logp = torch.from_numpy(store.logp.reshape(-1)[b.cells.numpy()])
    torch.testing.assert_close(logp, rollout_logp, atol=2e-5, rtol=0)
    assert (rollout_logp - unbanned)[b.early].min() > 0.05  # the ban moved the early tokens' mass
    # the reference gets the ban too: before the policy moves, the KL is 0
    ref, old_logp, _ = model._forward_pass(store)
    assert np.abs(old_logp - ref).max() < 1e-4
    # a whole update whose weights cannot move (learning rate 0): every ratio of every epoch is 1
    model.learn(8 * 24 * 2)
    values = model.logger.name_to_value
    assert values["train/approx_kl"] < 1e-9 and values["train/clip_fraction"] == 0
    assert values["train/skipped_batches"] == 0 and abs(values["rollout/kl"]) < 1e-3
    assert np.isfinite(values["train/entropy"])


def test_fixed_length_episodes_without_stop_tokens(policy_dir):
    model = PPO(policy_dir, env_id("Fixed", stop_tokens=[]), n_envs=4, n_steps=20, seed=0)
    collect(model)
    store = model._store
    assert store.dones.sum() == 8 and not store.stopped.any() and (store.lengths[store.dones] == 8).all()
    assert store.dones[7::8].all() and not store.dones[np.arange(20) % 8 != 7].any()  # every 8th step, every row
    with pytest.raises(ValueError, match="no stop tokens .* set no_stop_penalty=0"):
        PPO(policy_dir, "test/Fixed-v0", n_envs=2, no_stop_penalty=-1.0)


def test_logsigmoid_reward_bounds_the_score_then_clip_applies(policy_dir):
    model = PPO(policy_dir, env_id("Plain"), n_envs=6, n_steps=16, logsigmoid_reward=0.5, reward_clip=0.9, seed=2)
    collect(model)
    store = model._store
    scores = store.scores[store.dones].astype(np.float64)
    assert len(np.unique(scores)) > 2 and scores.min() < 0.1  # lower_share varies; some are clipped below
    expected = np.clip(np.log(1.0 / (1.0 + np.exp(-(scores - 0.5)))), -0.9, 0.9)
    shaped = model._shaped_rewards(store)
    np.testing.assert_allclose(shaped[store.dones], expected, rtol=1e-12)
    assert (shaped[~store.dones] == 0).all()  # only the last token of an episode carries the score
    with pytest.raises(ValueError, match="logsigmoid_reward"):
        PPO(policy_dir, ragged_env(), n_envs=2, logsigmoid_reward=float("nan"))

def test_gae_over_the_grid_matches_returns_computed_by_hand(policy_dir):
    model = PPO(policy_dir, env_id("Plain"), n_envs=2, n_steps=3, gamma=1.0, gae_lambda=1.0, seed=0)
    rewards = np.array([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
    values = np.array([[0.5, 0.1], [0.2, 0.3], [0.4, 0.6]])
    dones = np.array([[False, True], [True, False], [False, False]])
    last = np.array([10.0, 20.0])
    adv = model._gae(rewards, values, dones, last)
    # row 0: episode ends at t=1 (returns 2, 2), a new one runs from t=2 and bootstraps with 10
    # row 1: episode ends at t=0 (return 1), a new one runs t=1..2 and bootstraps with 20 (returns 23, 23)
    returns = np.array([[2.0, 1.0], [2.0, 23.0], [10.0, 23.0]])
    np.testing.assert_allclose(adv + values, returns)


# ---------------------------------------------------------------------------------------------- learning
def test_ppo_raises_the_reward_and_keeps_the_reference_frozen(policy_dir):
    model = PPO(policy_dir, env_id("Lower"), n_envs=16, n_steps=8, batch_size=128, learning_rate=1e-3,
                kl_coef=0.01, seed=0)
    pol_before = model.policy.gpt.wte.weight.detach().clone()
    scores = learn_with_frozen_reference(model, 16 * 8 * 25)
    assert np.mean(scores[-4:]) > np.mean(scores[:4]) + 0.2, scores
    assert not torch.equal(model.policy.gpt.wte.weight, pol_before)
    values = model.logger.name_to_value
    assert values["rollout/kl"] > 0 and values["train/skipped_batches"] == 0


class KLLog(BaseCallback):
    """The logger's rollout/kl and train/kl_coef of every update (read before the next dump)."""

    def __init__(self) -> None:
        super().__init__()
        self.kl: list[float] = []
        self.beta: list[float] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.record()

    def record(self) -> None:
        values = self.model.logger.name_to_value
        if "rollout/kl" in values:
            self.kl.append(values["rollout/kl"])
            self.beta.append(values["train/kl_coef"])


def test_adaptive_kl_holds_the_kl_per_completion_at_its_target(policy_dir):
    # the reward pays up to 1 per completion for lowercase letters, and beta starts 3.5x too low for the
    # target: with a horizon of 10,000 completions this run ends at ~15 nats. The default horizon must bring
    # it back and hold it.
    target = 4.0
    model = PPO(policy_dir, env_id("Lower"), n_envs=32, n_steps=8, batch_size=256,
                learning_rate=LRSchedule("linear", 5e-4), kl_coef=0.008, adaptive_kl=True, kl_target=target, seed=0)
    log = KLLog()
    model.learn(32 * 8 * 250, callback=log)
    log.record()  # the last update's figures
    kl, beta = np.array(log.kl), np.array(log.beta)
    assert len(kl) == 250
    assert kl[20:80].max() > 2 * target  # the reward did pull the policy far past the target ...
    assert beta.max() > 3 * beta[0]  # ... beta rose several-fold against it ...
    assert abs(kl[-20:].mean() / target - 1) < 0.15, kl[-20:]  # ... and the run ends holding the target


def test_exploding_ratios_skip_the_batch(policy_dir):
    model = PPO(policy_dir, env_id("Lower"), n_envs=4, n_steps=8, batch_size=16, n_epochs=2, learning_rate=1e-3,
                ratio_threshold=1.0 + 1e-9, seed=0)
    before = model.policy.gpt.wte.weight.detach().clone()
    model.learn(32)
    assert model.logger.name_to_value["train/skipped_batches"] > 0
    # every minibatch whose ratio moved by more than 1e-9 was dropped: nothing (or next to nothing) changed
    assert (model.policy.gpt.wte.weight - before).abs().max() < 1e-3


def test_diverged_weights_stop_training_with_a_message(policy_dir):
    model = PPO(policy_dir, env_id("Lower"), n_envs=2, n_steps=4, seed=0)
    with torch.no_grad():
        model.policy.gpt.h[0].attn.c_proj.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN/inf.*lower learning_rate"):
        model.learn(8)


# ---------------------------------------------------------------------------------------------- saving
def test_save_load_and_checkpoint_round_trip(policy_dir, tmp_path):
    model = PPO(policy_dir, env_id("Lower"), n_envs=4, n_steps=8, batch_size=16, learning_rate=1e-3,
                adaptive_kl=True, kl_target=0.1, seed=0)
    model.learn(64)
    model.save(tmp_path / "ppo.zip")
    loaded = PPO.load(tmp_path / "ppo.zip", env=make_text_vec_env("test/Lower-v0", n_envs=4))
    for (k, v), (k2, v2) in zip(model.policy.state_dict().items(), loaded.policy.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert loaded.kl_ctl.beta == model.kl_ctl.beta != 0.05  # the adaptive coefficient moved and was kept
    loaded.learn(64, reset_num_timesteps=False)
    assert loaded.num_timesteps == 128

    ckpt = model.save_checkpoint(tmp_path / "ckpt")
    saved = load_checkpoint(ckpt)
    assert saved.config["stage"] == "ppo" and saved.config["parent"] == policy_dir and saved.step == 64
    torch.testing.assert_close(saved.model.wte.weight, model.policy.gpt.wte.weight)
    again = PPO(str(ckpt), env_id("Lower"), n_envs=4, n_steps=8, seed=0)  # a further stage starts from it
    torch.testing.assert_close(again.policy.net.value.proj.weight, model.policy.net.value.proj.weight)
    # the new run's reference is its own starting point (the PPO checkpoint), not the first SFT policy
    torch.testing.assert_close(again.policy.reference.wte.weight, model.policy.gpt.wte.weight)


# ---------------------------------------------------------------------------------------------- errors
def test_clear_errors_for_mismatched_parts(policy_dir, tmp_path):
    bpe = train_bpe(["some text to learn merges from, some text again"] * 20, 300)
    save_checkpoint(tmp_path / "bpe", GPT(GPTConfig(vocab_size=bpe.n_vocab, block_size=32, n_layer=1, n_head=2,
                                                    n_embd=32)), bpe, stage="sft")
    with pytest.raises(ValueError, match="vocabulary|tokenizer"):
        PPO(str(tmp_path / "bpe"), env_id("Lower"), n_envs=2)
    with pytest.raises(ValueError, match="block_size 32"):
        PPO(policy_dir, env_id("Long", max_new_tokens=20), n_envs=2)
    with pytest.raises(ValueError, match="rlfl text vector env"):
        PPO(policy_dir, gymnasium.make("CartPole-v1"), n_envs=2)
    with pytest.raises(FileNotFoundError, match="not an rlfl checkpoint"):
        PPO(str(tmp_path / "missing"), env_id("Lower"))
    with pytest.raises(ValueError, match="not registered.*did you mean"):
        make_text_vec_env("test/Lowr-v0")
    with pytest.raises(ValueError, match="n_epochs=0"):
        PPO(policy_dir, env_id("Lower"), n_epochs=0)


# ---------------------------------------------------------------------------------------------- plain SB3
def test_stable_baselines3_ppo_and_a2c_train_the_transformer_policy(policy_dir):
    from stable_baselines3 import A2C
    from stable_baselines3 import PPO as SB3PPO

    env = make_text_vec_env(env_id("Lower"), n_envs=4)
    model = SB3PPO(TransformerPolicy, env, n_steps=32, batch_size=32, n_epochs=2, learning_rate=1e-3,
                   policy_kwargs={"checkpoint": policy_dir}, seed=0)
    before = model.policy.gpt.wte.weight.detach().clone()
    model.learn(256)
    assert model.num_timesteps == 256 and not torch.equal(model.policy.gpt.wte.weight, before)
    assert len(model.ep_info_buffer) > 0  # TextVecEnv reports episodes like SB3's Monitor
    # a single Gymnasium env, which SB3 wraps itself
    a2c = A2C(TransformerPolicy, gymnasium.make("test/Lower-v0"), n_steps=8, policy_kwargs={"checkpoint": policy_dir},
              seed=0)
    a2c.learn(64)
    assert a2c.num_timesteps == 64


def test_text_vec_env_reports_finished_episodes(policy_dir):
    env = TextVecEnv(gymnasium.make_vec(ragged_env(reward=one), num_envs=3, vectorization_mode="vector_entry_point"))
    env.seed(0)
    env.reset()
    seen = 0
    for _ in range(10):
        _obs, rewards, dones, infos = env.step(np.full(3, 101))  # 'e' (a stop token here) ends every episode
        assert dones.all() and (rewards == 1.0).all()
        for info in infos:
            assert info["stopped"] and info["completion"] == "" and info["episode"]["l"] == 1
            assert "TimeLimit.truncated" not in info and set(info["terminal_observation"]) == {"input_ids",
                                                                                               "attention_mask"}
            seen += 1
    assert seen == 30


def prompt_sentiment(prompt: str, completion: str) -> float:
    """+1 for a prompt about food or film, -1 otherwise: a return the value head can read off the prompt."""
    return 1.0 if prompt.split()[0] in ("The", "Dinner") else -1.0


def test_value_lr_scale_lets_the_value_head_learn_and_survives_save_load(policy_dir, tmp_path):
    def run(scale: float) -> tuple[PPO, float]:
        model = PPO(policy_dir, env_id("PromptSign", reward=prompt_sentiment), n_envs=16, n_steps=8, batch_size=64,
                    learning_rate=1e-5, kl_coef=0.0, value_lr_scale=scale, seed=0)
        model.learn(16 * 8 * 12)
        return model, model.logger.name_to_value["train/explained_variance"]

    scaled, ev_scaled = run(100.0)
    _, ev_plain = run(1.0)
    # at the policy's learning rate the zero-initialised head explains next to nothing of the returns (0.005
    # here); a random 2-layer trunk keeps only part of the first word at later positions (0.32 with the scale)
    assert ev_scaled > 0.25 and ev_scaled > ev_plain + 0.2, (ev_scaled, ev_plain)
    groups = scaled.policy.optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1e-5, 1e-3])
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in scaled.policy.net.value.parameters()}
    scaled.save(tmp_path / "ppo.zip")
    loaded = PPO.load(tmp_path / "ppo.zip", env=make_text_vec_env("test/PromptSign-v0", n_envs=16))
    assert loaded.value_lr_scale == 100.0
    loaded.learn(128, reset_num_timesteps=False)
    assert [g["lr"] for g in loaded.policy.optimizer.param_groups] == pytest.approx([1e-5, 1e-3])
    with pytest.raises(ValueError, match="value_lr_scale"):
        PPO(policy_dir, env_id("Lower"), n_envs=2, value_lr_scale=0.0)
