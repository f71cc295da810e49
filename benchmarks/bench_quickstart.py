"""`rlfl quickstart` as a benchmark: the wall time of the whole pipeline and what it gives, into RESULTS.md.

Runs the quickstart with its defaults in a fresh folder (``--out``; an existing one is refused, so every
figure is of one whole run), then prints and records per policy: the gold positive rate and the gold
difference to SFT with their 95 % intervals, the KL to SFT, the completion length (and its ratio to SFT's),
the share of real words, plus the labels' agreement with gold and the wall time of each stage. These are the
quickstart's targets: <= 10 minutes on 2 cores, real words >= 0.97, gold positive rate >= 0.85 for both arms at
a KL <= 6 nats with the gold difference's interval above 0, no policy below 0.6x SFT's length.

    python benchmarks/bench_quickstart.py [--out runs/bench_quickstart] [--threads 0] [--no-record]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from results import record

from rlfl.compare_stats import format_ci
from rlfl.quickstart import QuickstartConfig, format_summary, quickstart


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_quickstart", help="a new folder for the run")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = one per core)")
    ap.add_argument("--no-record", action="store_true", help="print only; leave benchmarks/RESULTS.md alone")
    args = ap.parse_args()
    if Path(args.out).exists():
        raise SystemExit(f"{args.out}: exists; pass a new --out (the benchmark times one whole run)")
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    results = quickstart(QuickstartConfig(out=args.out, num_threads=args.threads, progress=False))
    wall = time.perf_counter() - t0
    print(format_summary(results))

    sft_length = results["policies"]["sft"]["length"]
    rows = []
    for name, p in results["policies"].items():
        rows.append([name, format_ci(p["gold_positive_rate"], 3),
                     "-" if name == "sft" else format_ci(p["gold_diff_vs_sft"], 3), format_ci(p["kl"], 2),
                     f"{p['length']:.1f} ({p['length'] / sft_length:.2f}x)", f"{p['in_vocab_rate']:.3f}"])
    gold = results["labels"]["agreement_with_gold"]
    timing = results["timing"]
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in timing.items() if isinstance(v, float) and k != "total")
    notes = (f"Wall time {wall:.0f} s ({stages}). Labels agree with gold: simulated human "
             f"{gold['human']['raw']:.3f}, AI ({results['labels']['ai']['source']}) {gold['ai']['raw']:.3f}.")
    print(notes)
    if not args.no_record:
        threads = args.threads or torch.get_num_threads()
        path = record("bench_quickstart", "python benchmarks/bench_quickstart.py",
                      ["policy", "gold positive rate", "gold - SFT", "KL to SFT (nats)", "length", "real words"],
                      rows, threads=threads, notes=notes)
        print(f"recorded in {path}")


if __name__ == "__main__":
    main()
