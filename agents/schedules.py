"""Learning-rate schedules for `rlfl.agents.PPO`, in SB3's form: ``progress_remaining`` (1 -> 0) -> rate.

SB3 calls the schedule with the fraction of the run still to go (1 at the first update, 0 at
``total_timesteps``), so a schedule decays over the whole run, and a run resumed with
``learn(..., reset_num_timesteps=False)`` picks it up where it was. The class pickles by reference, so
`PPO.save` / `PPO.load` keep it.

Example:
    >>> s = LRSchedule("linear", 1e-4)
    >>> s(1.0), s(0.5), s(0.0)
    (0.0001, 5e-05, 0.0)
    >>> round(LRSchedule("cosine", 1e-4, final=0.1)(0.5), 10)
    5.5e-05
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine")


class LRSchedule:
    """``lr`` held (constant) or decayed over the run to ``final * lr`` (linear or cosine)."""

    def __init__(self, kind: str, lr: float, *, final: float = 0.0) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"learning-rate schedule {kind!r}; use one of {', '.join(SCHEDULES)}")
        if not (lr >= 0 and math.isfinite(lr)):
            raise ValueError(f"learning rate {lr!r} must be a finite number >= 0 (0: the weights stay as they are)")
        if not 0.0 <= final <= 1.0:
            raise ValueError(f"final={final!r}: the end rate as a fraction of the start must be in [0, 1]")
        self.kind, self.lr, self.final = kind, float(lr), float(final)

    def __call__(self, progress_remaining: float) -> float:
        p = min(max(float(progress_remaining), 0.0), 1.0)
        if self.kind == "constant":
            return self.lr
        shape = p if self.kind == "linear" else 0.5 * (1.0 - math.cos(math.pi * p))
        return self.lr * (self.final + (1.0 - self.final) * shape)

    def __repr__(self) -> str:
        return f"LRSchedule({self.kind!r}, {self.lr!r}, final={self.final!r})"
