"""The request-batching worker: one thread owns a model and serves concurrent generation requests.

Callers (HTTP threads of ``rlfl serve``, an in-process judge) ``submit`` prompts with a ``SamplingConfig``
and block until their completions are ready. The worker gathers requests for at most ``batch_wait_ms``,
groups rows that share sampling settings and runs one batched ``rlfl.generate.generate`` call per group,
so concurrent users share the decode loop and every row still gets exactly its solo answer (rows of a
batch never see each other: left padding is masked). Seeded sampled rows run alone, because a batch
draws all its samples from one RNG stream.

A caller that streams (``rlfl serve`` with ``"stream": true``) passes ``on_tokens``: the worker then gives
`generate` an ``on_step`` hook that hands every row's token and logits to its own request's callback as the
step happens, so streamed rows share batches with the others, and a row whose caller has gone (its callback
returns False) ends there while the batch goes on for everyone else.

Example:
    >>> from rlfl.checkpoint import load_checkpoint                          # doctest: +SKIP
    >>> c = load_checkpoint("runs/sft")                                      # doctest: +SKIP
    >>> engine = BatchingEngine(c.model, pad_id=c.tokenizer.pad_id)          # doctest: +SKIP
    >>> engine.submit([c.tokenizer.encode("Hi")], sampling_config(c.tokenizer, max_new_tokens=8))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from rlfl.chat_template import stop_tokens
from rlfl.generate import SamplingConfig, generate
from rlfl.model import GPT
from rlfl.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------ sampling helpers
def stop_token_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    """The token ids that end a served completion: the end-of-text token and, for a tokenizer that can chat, its
    end-of-turn token (``<|end|>``, ``<|im_end|>``; `rlfl.chat_template.stop_tokens`)."""
    return stop_tokens(tokenizer)


def sampling_config(
    tokenizer: Tokenizer,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
) -> SamplingConfig:
    """OpenAI-style sampling settings as a `SamplingConfig`: temperature 0 is greedy, top_p 1 is no filter."""
    greedy = temperature == 0
    return SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=1.0 if greedy else temperature,
        top_p=None if top_p is None or top_p >= 1.0 else top_p,
        top_k=top_k,
        greedy=greedy,
        stop_tokens=stop_token_ids(tokenizer),
        seed=seed,
    )


# ------------------------------------------------------------------------------------ the batching engine
@dataclass
class Completion:
    """One generated row: its ids without the stop token, and whether a stop token ended it."""

    tokens: list[int]
    stopped: bool


class GenerationError(RuntimeError):
    """Generation failed inside the worker (answered 500), or the engine is shut down (503)."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


TokenCallback = Callable[[int, int, torch.Tensor], bool | None]
"""``on_tokens(row, token, logits)`` of `BatchingEngine.submit`; False ends the row."""


@dataclass
class _Job:
    prompts: list[list[int]]
    config: SamplingConfig
    results: list[Completion | None]
    done: threading.Event = field(default_factory=threading.Event)
    error: GenerationError | None = None
    pending: int = 0
    on_tokens: TokenCallback | None = None
    callback_error: Exception | None = None  # the first exception on_tokens raised, raised again by submit


@dataclass
class _Row:
    job: _Job
    index: int
    prompt: list[int]
    max_new: int
    config: SamplingConfig


class BatchingEngine:
    """One worker thread that owns the model and serves `submit` calls from any thread in batches.

    Example:
        >>> engine = BatchingEngine(model, pad_id=tok.pad_id, max_batch_size=8)    # doctest: +SKIP
        >>> engine.submit([[1, 2, 3]], SamplingConfig(max_new_tokens=5, greedy=True))[0].tokens  # doctest: +SKIP
    """

    def __init__(self, model: GPT, *, pad_id: int, max_batch_size: int = 8, batch_wait_ms: float = 10.0) -> None:
        self.model = model
        self.pad_id = pad_id
        self.block_size = model.config.block_size
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._stats_lock = threading.Lock()
        self._stats = {"requests": 0, "rows": 0, "generate_calls": 0, "batched_calls": 0,
                       "max_rows_per_call": 0, "generate_seconds": 0.0, "errors": 0}
        self._closed = False
        self._close_lock = threading.Lock()  # no job can be queued behind close()'s sentinel
        self._thread = threading.Thread(target=self._loop, name="rlfl-serve-worker", daemon=True)
        self._thread.start()

    def stats(self) -> dict[str, Any]:
        """Counters: requests, rows, generate calls, calls with more than one row, the largest call, time."""
        with self._stats_lock:
            return dict(self._stats)

    def submit(self, prompts: list[list[int]], config: SamplingConfig, timeout: float | None = None,
               on_tokens: TokenCallback | None = None) -> list[Completion]:
        """Complete ``prompts`` with ``config`` (blocking); each row's budget is clamped to the context left.

        ``on_tokens(row, token, logits)``, when given, is called on the worker thread at each step of each row
        of this request, as the step happens: ``row`` indexes ``prompts``, ``token`` is the id the row took (a
        stop token too, after which the row gets no more calls, nor after its budget) and ``logits`` the
        (vocab,) float logits it was picked from, before temperature, top-k and top-p. It holds up the whole
        batch, so it should only hand the work to another thread. Returning False ends that row there: its
        Completion keeps the tokens so far and the batch goes on for the other rows. An exception does the
        same, and submit raises it once the request's other rows are done.

        Raises ValueError when a prompt leaves no room for one new token, GenerationError when the
        generate call failed or the engine is closed.
        """
        for i, p in enumerate(prompts):
            if len(p) >= self.block_size:
                raise ValueError(f"prompt {i} is {len(p)} tokens; the model's context is {self.block_size} tokens")
        job = _Job(prompts=prompts, config=config, results=[None] * len(prompts), pending=len(prompts),
                   on_tokens=on_tokens)
        with self._close_lock:
            if self._closed:
                raise GenerationError("the server is shutting down", status=503)
            self._queue.put(job)
        if not job.done.wait(timeout):
            raise GenerationError(f"no answer within {timeout} s", status=503)
        if job.error is not None:
            raise job.error
        if job.callback_error is not None:
            raise job.callback_error
        return job.results  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the worker once it has answered every request queued so far; later submits get 503."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout=60)

    # -- worker side ------------------------------------------------------------------------------------
    def _gather(self) -> list[_Job] | None:
        first = self._queue.get()
        if first is None:
            return None
        jobs, rows = [first], len(first.prompts)
        deadline = time.monotonic() + self.batch_wait_s
        while rows < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:  # close(): finish what we hold, then stop
                self._queue.put(None)
                break
            jobs.append(job)
            rows += len(job.prompts)
        return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._gather()
            if jobs is None:
                break
            try:
                self._run(jobs)
            except Exception as exc:  # never let one bad batch kill the only worker
                log.exception("serve worker: batch failed")
                self._fail(jobs, GenerationError(f"generation failed: {exc}"))

    def _fail(self, jobs: list[_Job], error: GenerationError) -> None:
        for job in jobs:
            if not job.done.is_set():
                job.error = error
                job.done.set()
        with self._stats_lock:
            self._stats["errors"] += len(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        groups: dict[tuple, list[_Row]] = {}
        for job in jobs:
            cfg = job.config
            for i, prompt in enumerate(job.prompts):
                row = _Row(job, i, prompt, min(cfg.max_new_tokens, self.block_size - len(prompt)), cfg)
                if cfg.greedy:
                    key: tuple = ("greedy", cfg.stop_tokens)
                elif cfg.seed is not None:  # alone, so the output does not depend on the batch (docstring)
                    row.config = dataclasses.replace(cfg, seed=cfg.seed + i)
                    key = ("seeded", id(row))
                else:
                    key = ("sample", cfg.temperature, cfg.top_k, cfg.top_p, cfg.stop_tokens)
                groups.setdefault(key, []).append(row)
        with self._stats_lock:
            self._stats["requests"] += len(jobs)
            self._stats["rows"] += sum(len(j.prompts) for j in jobs)
        for rows in groups.values():
            for batch in self._pack(rows):
                self._generate(batch)

    def _pack(self, rows: list[_Row]) -> list[list[_Row]]:
        """Split a group into calls of at most max_batch_size rows whose longest prompt + budget fits."""
        batches: list[list[_Row]] = []
        cur: list[_Row] = []
        P = N = 0
        for row in rows:
            p, n = max(P, len(row.prompt)), max(N, row.max_new)
            if cur and (len(cur) == self.max_batch_size or p + n > self.block_size):
                batches.append(cur)
                cur, p, n = [], len(row.prompt), row.max_new
            cur.append(row)
            P, N = p, n
        if cur:
            batches.append(cur)
        return batches

    def _generate(self, batch: list[_Row]) -> None:
        batch = [r for r in batch if r.job.error is None]  # a request that already failed is answered
        if not batch:
            return
        jobs = list({id(r.job): r.job for r in batch}.values())
        config = dataclasses.replace(batch[0].config, max_new_tokens=max(r.max_new for r in batch))
        hook = _StepHook(batch) if any(r.job.on_tokens is not None for r in batch) else None
        t0 = time.perf_counter()
        try:
            out = generate(self.model, [r.prompt for r in batch], config, pad_id=self.pad_id, on_step=hook)
        except Exception as exc:
            log.warning("serve worker: generate failed for %d rows: %s", len(batch), exc)
            self._fail(jobs, GenerationError(f"generation failed: {exc}"))
            return
        seconds = time.perf_counter() - t0
        with self._stats_lock:
            s = self._stats
            s["generate_calls"] += 1
            s["batched_calls"] += len(batch) > 1
            s["max_rows_per_call"] = max(s["max_rows_per_call"], len(batch))
            s["generate_seconds"] += seconds
        log.debug("serve worker: %d rows from %d requests, up to %d new tokens, %.3f s",
                  len(batch), len(jobs), config.max_new_tokens, seconds)
        for b, (row, tokens, stopped) in enumerate(zip(batch, out.tokens, out.finished)):
            if hook is not None and b in hook.cut:  # ended by its callback
                tokens, stopped = tokens[: hook.cut[b]], False
            elif len(tokens) > row.max_new:  # ran past this row's own budget: cut back, no stop within it
                tokens, stopped = tokens[: row.max_new], False
            elif stopped:
                tokens = tokens[:-1]
            row.job.results[row.index] = Completion(tokens=tokens, stopped=stopped)
            row.job.pending -= 1
            if row.job.pending == 0 and row.job.error is None:
                row.job.done.set()


class _StepHook:
    """``generate``'s ``on_step`` for a batch with ``on_tokens`` callbacks (see `BatchingEngine.submit`).

    It hands each row's token and logits to the row's own callback until the row ends: at a stop token, at its
    own budget (the call runs to the batch's longest), or when its callback returns False or raises; ``cut``
    then records how many tokens that row keeps. Returning False once every row has ended stops the call
    early (rows whose callers have all gone cost nothing more); rows that ended normally are complete by
    then, so their results are the same as without the hook.
    """

    def __init__(self, batch: list[_Row]) -> None:
        self.batch = batch
        self.step = 0
        self.ended = [False] * len(batch)
        self.cut: dict[int, int] = {}  # batch row -> tokens kept, for rows ended by their callback

    def __call__(self, tokens: torch.Tensor, logits: torch.Tensor) -> bool:
        for b, (row, token) in enumerate(zip(self.batch, tokens.tolist())):
            if self.ended[b]:
                continue
            last = token in row.config.stop_tokens or self.step + 1 >= row.max_new
            if row.job.on_tokens is not None and not self._hand(row, token, logits[b]) and not last:
                self.cut[b], last = self.step + 1, True
            self.ended[b] = last
        self.step += 1
        return not all(self.ended)

    @staticmethod
    def _hand(row: _Row, token: int, logits: torch.Tensor) -> bool:
        """Call the row's callback; False when it ends the row (False returned, or an exception kept for submit)."""
        job = row.job
        try:
            return job.on_tokens(row.index, token, logits) is not False  # type: ignore[misc]
        except Exception as exc:
            log.debug("serve worker: on_tokens of row %d raised %r; the row ends", row.index, exc)
            if job.callback_error is None:
                job.callback_error = exc
            return False
