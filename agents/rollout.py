"""Fast PPO rollouts: a KV-cached actor that follows the vector env row by row, and the rollout store.

The env is stepped token by token, as any Gymnasium agent would: one action per row per step. What makes
it fast is that the policy never re-reads a row's context. `CachedActor` keeps one KV-cache row per env
row, laid out as ``[prompt window (P columns, left-padded) | completion tokens]``, so a step is one
single-token forward of the whole batch (`rlfl.model.GPT.decode_ragged`: each row writes at its own
column, since rows start and stop at different times). Rows the env restarted (``dones``) are
re-prefilled from their new prompt, all in one small batched forward.

`RolloutStore` records the rollout on a (steps, rows) grid (actions, log-probs, values, env rewards,
episode ends) and cuts it into **segments**: the part of one episode that falls in this rollout, with its
token sequence. Training then runs ONE forward per segment for all its actions (PPO's epochs re-read whole
sequences, never single tokens), and GAE runs over the grid, where an episode that ends mid-rollout and
one that continues into the next are both handled by the usual done-masking and bootstrap value.

An env with ``min_new_tokens`` (a stop token before that many new tokens does not end the episode) gets the
standard remedy for empty and too-short completions: the actor bans the stop tokens' logits until a row has
that many tokens (`rlfl.generate.ban_stop_tokens`), and every `Batch` says which of its actions were chosen
under the ban, so the training forwards recompute exactly the distribution that was sampled (for the policy
and the reference alike).

Example (shapes only; `rlfl.agents.PPO` drives these):
    >>> store = RolloutStore(n_steps=4, num_rows=2, seq_len=10)
    >>> store.actions.shape, store.num_segments
    ((4, 2), 0)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from rlfl.generate import ban_stop_tokens
from rlfl.model import KVCache


class CachedActor:
    """The policy's view of every env row, kept in a KV cache between env steps.

    ``prompt_tokens`` (P) and ``max_new_tokens`` (N) are the env's; observations are the env's left-padded
    windows of length P + N. After `load` (or `advance`) the logits and value of each row's current state are
    in ``logits`` (rows, vocab) and ``values`` (rows,). ``stop_tokens`` cannot be sampled while a row has fewer
    than ``min_new_tokens`` completion tokens (the env's option of the same name).
    """

    def __init__(self, policy: torch.nn.Module, num_rows: int, prompt_tokens: int, max_new_tokens: int,
                 pad_id: int, device: torch.device, *,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 min_new_tokens: int = 0, stop_tokens: Sequence[int] = ()) -> None:
        self.policy = policy
        self.gpt = policy.net.gpt
        self.rows, self.P, self.N = int(num_rows), int(prompt_tokens), int(max_new_tokens)
        self.width = self.P + self.N
        self.pad_id = int(pad_id)
        self.device = device
        self.autocast = autocast
        self.min_new_tokens = int(min_new_tokens)
        self.stop_ids = torch.tensor(sorted(stop_tokens), dtype=torch.long, device=device)
        # the cache holds keys/values in the dtype attention reads them in: the forwards' (autocast) dtype
        # on a GPU, float32 on a CPU, whose attention computes in float32 (rlfl.attention._masked_attention_cpu)
        with autocast():
            dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        if dtype is None or device.type == "cpu":
            dtype = next(self.gpt.parameters()).dtype
        self.cache = KVCache(self.gpt.config, self.rows, self.width, device=device, dtype=dtype)
        self.tokens = np.full((self.rows, self.width), self.pad_id, dtype=np.int64)  # the layout, on the host
        self.mask = np.zeros((self.rows, self.width), dtype=bool)
        self.n = np.zeros(self.rows, dtype=np.int64)  # completion tokens so far (the env's completion_lengths)
        self.key_mask = torch.zeros(self.rows, self.width, dtype=torch.bool, device=device)
        self.n_real = torch.zeros(self.rows, dtype=torch.long, device=device)  # position of the next token
        self.logits: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    # ------------------------------------------------------------------------------ layout from obs
    def _layout(self, rows: np.ndarray, obs: dict[str, np.ndarray], n_new: np.ndarray) -> None:
        """Rebuild rows' [prompt window | completion] from the env's left-padded observation."""
        ids, mask = np.asarray(obs["input_ids"])[rows], np.asarray(obs["attention_mask"])[rows].astype(bool)
        L = ids.shape[1]
        if L != self.width:
            raise ValueError(f"observation length {L} != prompt window {self.P} + max_new_tokens {self.N}; "
                             "the actor must be built with the env's max_prompt_tokens and max_new_tokens")
        n = np.asarray(n_new, dtype=np.int64)[rows]
        # the newest token sits at L-1; the n completion tokens end there and the prompt window ends before them
        cols = (self.N - n)[:, None] + np.arange(self.P)[None, :]
        self.tokens[rows, : self.P] = np.take_along_axis(ids, cols, 1)
        self.mask[rows, : self.P] = np.take_along_axis(mask, cols, 1)
        gen_cols = np.minimum((L - n)[:, None] + np.arange(self.N)[None, :], L - 1)
        has = np.arange(self.N)[None, :] < n[:, None]
        self.tokens[rows, self.P:] = np.where(has, np.take_along_axis(ids, gen_cols, 1), self.pad_id)
        self.mask[rows, self.P:] = has
        self.n[rows] = n

    @torch.no_grad()
    def _prefill(self, rows: np.ndarray) -> None:
        """Run rows' layout through the model into the cache; their next logits/values come out.

        Columns that are left padding in every one of these rows are skipped (a restarted row's short
        prompt in a wide window): their cache entries stay as they were, hidden by ``key_mask``. Rows with
        the same layout (a group's G copies of one prompt) are computed once and copied.
        """
        width = self.P + int(self.n[rows].max(initial=0))
        start = int(np.argmax(self.mask[rows, : self.P].any(0)))  # first column real in any row (0 if none)
        layouts = np.concatenate([self.tokens[rows, start:width], self.mask[rows, start:width]], axis=1)
        unique, inverse = np.unique(layouts, axis=0, return_inverse=True)
        inverse = torch.from_numpy(inverse.reshape(-1)).to(self.device)
        ids = torch.from_numpy(unique[:, : width - start]).to(self.device)
        mask = torch.from_numpy(unique[:, width - start:].astype(bool)).to(self.device)
        tmp = KVCache(self.gpt.config, len(unique), width - start, device=self.device, dtype=self.cache.k.dtype)
        with self.autocast():
            hidden = self.gpt.hidden_states(ids, attention_mask=mask, cache=tmp)
        index = torch.from_numpy(rows).to(self.device)
        self.cache.k[:, index, :, start:width] = tmp.k[:, inverse]
        self.cache.v[:, index, :, start:width] = tmp.v[:, inverse]
        self.key_mask[index] = torch.from_numpy(self.mask[rows]).to(self.device)
        self.n_real[index] = mask.sum(1)[inverse]
        last = torch.from_numpy(self.P - 1 - start + self.n[rows]).to(self.device)
        h = hidden[inverse, last]
        self._set_outputs(index, h)

    def _set_outputs(self, index: torch.Tensor | slice, h: torch.Tensor) -> None:
        with self.autocast():
            logits = self.gpt.lm_head(h).float()
            values = self.policy.net.value(h).float()
        if not (torch.isfinite(logits).all() and torch.isfinite(values).all()):
            raise FloatingPointError("the policy produced NaN/inf logits or values during the rollout; the weights "
                                     "have diverged: lower learning_rate, raise kl_coef or restart from a checkpoint")
        if self.logits is None:
            self.logits = torch.empty(self.rows, logits.shape[1], device=self.device)
            self.values = torch.empty(self.rows, device=self.device)
        self.logits[index] = logits
        self.values[index] = values

    def load(self, obs: dict[str, np.ndarray], n_new: np.ndarray) -> None:
        """(Re)build every row from the env's observation: at the first rollout and after each policy update,
        when the cached keys/values of episodes in flight were computed by the old weights."""
        rows = np.arange(self.rows)
        self._layout(rows, obs, n_new)
        self._prefill(rows)

    # ------------------------------------------------------------------------------ stepping
    @torch.no_grad()
    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per row from the plain softmax (no top-k/top-p/temperature: the KL must be right), the
        stop tokens banned in rows that have fewer than ``min_new_tokens`` tokens."""
        logits = self.logits
        if self.min_new_tokens:
            early = torch.from_numpy(self.n < self.min_new_tokens).to(self.device)
            logits = ban_stop_tokens(logits, early, self.stop_ids)
        logp_all = torch.log_softmax(logits, dim=-1)
        # inverse-CDF sampling: one uniform per row and a binary search; exact, and on a CPU ~10x faster
        # than torch.multinomial over a 4k vocabulary (which draws with a much heavier per-row algorithm)
        cdf = logp_all.exp().cumsum(-1)
        u = torch.rand(self.rows, 1, device=self.device) * cdf[:, -1:]
        actions = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[1] - 1)
        return actions, logp_all.gather(1, actions[:, None]).squeeze(1)

    def append(self, actions: np.ndarray) -> None:
        """Record each row's action as its next completion token (before the env step, so a finishing
        row's last token is in its segment)."""
        cols = self.P + self.n
        if (self.n >= self.N).any():
            raise RuntimeError("a row has more completion tokens than max_new_tokens: the actor and the env are "
                               "out of step; reset the env and reload the actor")
        self.tokens[np.arange(self.rows), cols] = actions
        self.mask[np.arange(self.rows), cols] = True
        self.n += 1

    @torch.no_grad()
    def advance(self, actions: torch.Tensor, dones: np.ndarray, obs: dict[str, np.ndarray], *,
                restart: bool = True) -> None:
        """Feed the appended actions of rows that go on; re-prefill rows the env restarted from ``obs``.

        ``restart=False`` (the rollout's last step) leaves restarted rows stale: `load` rebuilds every row
        before the next rollout anyway, and a finished row's next value is never bootstrapped.
        """
        going = ~dones
        if going.any():
            cols = torch.from_numpy(self.P + self.n - 1).to(self.device)
            rows_t = torch.arange(self.rows, device=self.device)
            self.key_mask[rows_t, cols] = True
            with self.autocast():
                h = self.gpt.decode_ragged(actions, self.cache, columns=cols, position_ids=self.n_real,
                                           key_mask=self.key_mask)
            self.n_real += 1
            # finished rows computed garbage here; the prefill below replaces their outputs (or load() does)
            self._set_outputs(slice(None), h)
        rows = np.flatnonzero(dones)
        if restart and rows.size:
            self._layout(rows, obs, np.zeros(self.rows, dtype=np.int64))
            self._prefill(rows)


@dataclass
class Batch:
    """The actions of some segments, ready for one forward: what `TransformerPolicy.sequence_outputs` takes.

    Segments are packed: each segment's real tokens (its prompt without the window's left padding, then its
    completion) sit back to back in rows, and ``segment_ids`` (None when no row holds two) keeps each one
    attending to itself only, with positions restarting at its start. Segments whose context before their
    first action is the same (the completions of one prompt in a GRPO group) share one copy of it:
    ``branch_ids`` numbers each one's own tokens after the shared prefix (0: the prefix), so the prompt is
    computed once per group instead of once per completion (`rlfl.attention.segment_mask`).
    """

    tokens: torch.Tensor  # (R, W)
    mask: torch.Tensor  # (R, W): False on the padding after a row's last segment
    positions: torch.Tensor  # (K, 2): (row, column whose hidden state chose the action)
    actions: torch.Tensor  # (K,)
    cells: torch.Tensor  # (K,): flat index t * rows + r of each action on the grid
    segment_ids: torch.Tensor | None = None  # (R, W): which segment each column belongs to (0: padding)
    branch_ids: torch.Tensor | None = None  # (R, W): 0 on a shared prefix, b > 0 on its b-th continuation
    early: torch.Tensor | None = None  # (K,): chosen with the stop tokens banned (None: no min_new_tokens)
    stop_ids: torch.Tensor | None = None  # (S,): the banned stop tokens

    @property
    def layout(self) -> dict[str, torch.Tensor | None]:
        """The keyword arguments of `TransformerPolicy.sequence_outputs` beside tokens, mask, positions, actions."""
        return {"segment_ids": self.segment_ids, "branch_ids": self.branch_ids, "early": self.early,
                "stop_ids": self.stop_ids}


def pack_rows(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """First-fit decreasing: (row, offset) of each length in rows as long as the longest, and the row count.

    Example:
        >>> pack_rows(np.array([5, 2, 3]))
        (array([0, 1, 1]), array([0, 3, 0]), 2)
    """
    width = int(lengths.max(initial=1))
    row, offset, fill = np.zeros(len(lengths), np.int64), np.zeros(len(lengths), np.int64), []
    for i in np.argsort(-lengths, kind="stable"):
        r = next((r for r, f in enumerate(fill) if f + lengths[i] <= width), len(fill))
        if r == len(fill):
            fill.append(0)
        row[i], offset[i] = r, fill[r]
        fill[r] += int(lengths[i])
    return row, offset, len(fill)


class RolloutStore:
    """One rollout on a (n_steps, num_rows) grid, plus its segments (per-episode token sequences).

    ``min_new_tokens`` and ``stop_tokens``: the stop-token ban the actor sampled under (see `CachedActor`),
    handed to every `Batch` so the training forwards apply it to the same actions.
    """

    def __init__(self, n_steps: int, num_rows: int, seq_len: int, *, min_new_tokens: int = 0,
                 stop_tokens: Sequence[int] = ()) -> None:
        self.n_steps, self.num_rows, self.seq_len = int(n_steps), int(num_rows), int(seq_len)
        self.min_new_tokens = int(min_new_tokens)
        self.stop_tokens = sorted(int(t) for t in stop_tokens)
        shape = (self.n_steps, self.num_rows)
        self.actions = np.zeros(shape, dtype=np.int64)
        self.logp = np.zeros(shape, dtype=np.float32)
        self.values = np.zeros(shape, dtype=np.float32)
        self.rewards = np.zeros(shape, dtype=np.float32)  # env rewards (score on the last token of an episode)
        self.scores = np.zeros(shape, dtype=np.float32)  # the reward source's raw score where an episode ended
        self.dones = np.zeros(shape, dtype=bool)
        self.stopped = np.zeros(shape, dtype=bool)  # ended by a stop token (False with done: ran out of tokens)
        self.lengths = np.zeros(shape, dtype=np.int64)  # where an episode ended: its tokens, a final stop excluded
        self.last_values = np.zeros(self.num_rows, dtype=np.float32)
        self.steps = 0
        # segments: row, first completion index acted on here (j0), completion length at the end, first step
        self._seg_tokens: list[np.ndarray] = []
        self._seg_masks: list[np.ndarray] = []
        self._seg_meta: list[tuple[int, int, int, int]] = []
        self.completions: list[tuple[str, str, float]] = []  # (prompt, completion, score) of finished episodes

    @property
    def num_segments(self) -> int:
        return len(self._seg_meta)

    def close_segment(self, row: int, j0: int, n_end: int, t0: int, tokens: np.ndarray, mask: np.ndarray) -> None:
        """Record rows' episode part [j0, n_end) acted on from step t0 (tokens: its [prompt | completion] row)."""
        if n_end > j0:
            self._seg_tokens.append(tokens.copy())
            self._seg_masks.append(mask.copy())
            self._seg_meta.append((int(row), int(j0), int(n_end), int(t0)))

    def index(self, prompt_tokens: int) -> None:
        """Freeze the segments into arrays: every action's (segment, column, token, grid cell). A rollout that
        stopped before ``n_steps`` steps keeps its grid up to the steps taken."""
        if self.steps < self.n_steps:
            for name in ("actions", "logp", "values", "rewards", "scores", "dones", "stopped", "lengths"):
                setattr(self, name, getattr(self, name)[: self.steps])
            self.n_steps = self.steps
        self.seg_tokens = np.stack(self._seg_tokens) if self._seg_tokens else np.zeros((0, self.seq_len), np.int64)
        self.seg_masks = np.stack(self._seg_masks) if self._seg_masks else np.zeros((0, self.seq_len), bool)
        self.seg_first = self.seg_masks.argmax(1)  # the prompt's first real column (the window is left-padded)
        meta = np.array(self._seg_meta, dtype=np.int64).reshape(-1, 4)
        self.seg_row, self.seg_j0, self.seg_n, self.seg_t0 = meta.T
        counts = self.seg_n - self.seg_j0
        self.seg_offsets = np.concatenate([[0], np.cumsum(counts)])
        seg = np.repeat(np.arange(len(meta)), counts)
        j = np.arange(len(seg)) - self.seg_offsets[seg] + self.seg_j0[seg]
        self.prompt_tokens = int(prompt_tokens)
        self.act_seg, self.act_col = seg, prompt_tokens - 1 + j  # the hidden state before token j chose it
        self.act_early = j < self.min_new_tokens  # chosen with the stop tokens banned
        self.act_tok = self.seg_tokens[seg, prompt_tokens + j]
        t = self.seg_t0[seg] + (j - self.seg_j0[seg])
        self.act_cell = t * self.num_rows + self.seg_row[seg]
        if len(seg) != self.steps * self.num_rows or len(np.unique(self.act_cell)) != len(seg):
            raise AssertionError("rollout segments do not tile the (steps, rows) grid exactly once")
        if not np.array_equal(self.act_tok, self.actions.reshape(-1)[self.act_cell]):
            raise AssertionError("a segment's tokens differ from the actions taken")

    def batch(self, segments: np.ndarray, device: torch.device) -> Batch:
        """The tensors of the given segments' actions, packed into as few rows as fit (see `Batch`).

        Why pack: a segment is [left-padded prompt window | completion], and with prompts of 9-38 tokens in a
        48-token window and completions that stop early, half the columns of a plain (segments, width) batch
        are padding that every layer computes, forward and backward, in every epoch. Why share prefixes:
        with G completions per prompt and short answers (a number after a 20-token question), the prompt
        is most of every segment's tokens. A shared unit is kept within 4x the longest segment, so attention
        over a unit costs at most 16x one segment's (a few long completions go in several units).
        """
        segments = np.sort(segments)
        starts, ends = self.seg_offsets[segments], self.seg_offsets[segments + 1]
        k = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)]) if len(segments) else np.zeros(0, int)
        local = np.searchsorted(segments, self.act_seg[k])
        first = self.seg_first[segments]
        cut = self.prompt_tokens + self.seg_j0[segments]  # the context before a segment's first action ends here
        # a segment is read up to the column of its last action: the token after it chooses nothing here
        last = self.act_col[ends - 1] + 1
        cap = 4 * int((last - first).max(initial=1))
        units: list[list[int]] = []  # segments (local indices): the first one's context, then each one's own tokens
        sizes: list[int] = []  # each unit's columns
        open_unit: dict[bytes, int] = {}  # context -> the unit that takes the next segment with it
        for i, s in enumerate(segments):
            key = self.seg_tokens[s, first[i]: cut[i]].tobytes() + self.seg_masks[s, first[i]: cut[i]].tobytes()
            u = open_unit.get(key, -1)
            if u < 0 or sizes[u] + last[i] - cut[i] > cap:
                u = open_unit[key] = len(units)
                units.append([])
                sizes.append(cut[i] - first[i])
            units[u].append(i)
            sizes[u] += last[i] - cut[i]
        unit_len = np.array(sizes, np.int64)
        row, offset, n_rows = pack_rows(unit_len)
        width = int(unit_len.max(initial=1))
        tokens = np.zeros((n_rows, width), np.int64)  # any valid id: padding is masked and never read
        mask = np.zeros((n_rows, width), bool)
        seg_ids = np.zeros((n_rows, width), np.int64)
        branch = np.zeros((n_rows, width), np.int64)
        seg_row = np.zeros(len(segments), np.int64)
        context_base = np.zeros(len(segments), np.int64)  # column of segment column c < cut: base + c
        own_base = np.zeros(len(segments), np.int64)  # column of segment column c >= cut: base + c
        for u, members in enumerate(units):
            r, o, s0 = row[u], offset[u], segments[members[0]]
            p = cut[members[0]] - first[members[0]]
            tokens[r, o: o + p] = self.seg_tokens[s0, first[members[0]]: cut[members[0]]]
            mask[r, o: o + p] = self.seg_masks[s0, first[members[0]]: cut[members[0]]]
            seg_ids[r, o: o + unit_len[u]] = u + 1
            at = o + p
            for b, i in enumerate(members, start=1):
                n = last[i] - cut[i]
                tokens[r, at: at + n] = self.seg_tokens[segments[i], cut[i]: last[i]]
                mask[r, at: at + n] = self.seg_masks[segments[i], cut[i]: last[i]]
                branch[r, at: at + n] = b
                seg_row[i], context_base[i], own_base[i] = r, o - first[i], at - cut[i]
                at += n
        col = self.act_col[k]
        col = np.where(col < cut[local], context_base[local], own_base[local]) + col
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
        packed = n_rows < len(segments)
        shared = len(units) < len(segments)
        ban = self.min_new_tokens > 0 and bool(self.stop_tokens)
        return Batch(tokens=to(tokens), mask=to(mask), positions=to(np.stack([seg_row[local], col], 1)),
                     actions=to(self.act_tok[k]), cells=to(self.act_cell[k]),
                     segment_ids=to(seg_ids) if packed else None, branch_ids=to(branch) if shared else None,
                     early=to(self.act_early[k]) if ban else None,
                     stop_ids=to(np.array(self.stop_tokens, dtype=np.int64)) if ban else None)
