"""The arena's plan: every entry measured (as ``train`` plans a run) before any trains.

    echo '{"configs": [...TrainConfig dicts...]}' | python -m ndformer.arena.plan

prints one JSON line: per entry its ``Plan`` (step, validation and test seconds, peak
memory), or ``{"refused": message}`` when an entry would not fit in memory.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ..errors import UsageError, format_bytes

#: Seconds a worker process takes to start, load the data and build its model.
WORKER_SECONDS = 4.0


def plan_entries(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """Plan every entry on data loaded once (entries train on the same data)."""
    from ..train import TrainConfig, resolve_data
    from ..train.plan import plan_run

    data = resolve_data(TrainConfig(**configs[0]))
    plans = []
    for number, config in enumerate(configs):
        try:
            _, plan = plan_run(TrainConfig(**config), data)
        except UsageError as error:
            return dict(refused=str(error), entry=number)
        plans.append(dict(seconds=plan.seconds, step_seconds=plan.step_seconds,
                          peak_bytes=plan.peak_bytes))  # fmt: skip
    return dict(plans=plans)


def arena_seconds(plans: list[dict[str, Any]], cost_rounds: int, jobs: int = 1) -> float:
    """Estimated wall time of an arena: every entry's run and its worker's start, ``jobs``
    at a time in entry order, then the cost measurement's ``cost_rounds`` (plus one
    warm-up) rounds of one step each."""
    finishing = [0.0] * max(1, jobs)
    for plan in plans:  # each entry starts when the earliest running one finishes
        earliest = finishing.index(min(finishing))
        finishing[earliest] += plan["seconds"] + WORKER_SECONDS
    costs = (cost_rounds + 1) * sum(p["step_seconds"] for p in plans) + WORKER_SECONDS
    return max(finishing) + costs


def peak_at_once(plans: list[dict[str, Any]], jobs: int = 1) -> int:
    """The most memory ``jobs`` entries training at a time can hold together: the sum
    of the ``jobs`` largest peaks."""
    return sum(sorted((p["peak_bytes"] for p in plans), reverse=True)[: max(1, jobs)])


def plan_lines(labels: list[str], steps: list[int], plans: list[dict[str, Any]],
               cost_rounds: int, jobs: int = 1, threads: int = 1) -> list[str]:  # fmt: skip
    """The arena's plan as printed before it trains."""
    from ..train.plan import _duration

    lines = [f"plan: {_count(jobs, 'entry', 'entries')} at a time, on"
             f" {_count(threads, 'thread', 'threads')} each:"]  # fmt: skip
    width = max(len(label) for label in labels)
    for label, count, plan in zip(labels, steps, plans, strict=True):
        lines.append(
            f"  {label:<{width}}  {count} steps x {plan['step_seconds']:.2f} s, about"
            f" {_duration(plan['seconds'])}, {format_bytes(plan['peak_bytes'])} peak"
        )
    total = arena_seconds(plans, cost_rounds, jobs)
    lines.append(
        f"  in all   about {_duration(total)} with the cost measurement, at most"
        f" {format_bytes(peak_at_once(plans, jobs))} at once"
    )
    return lines


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def main() -> None:
    request = json.loads(sys.stdin.read())
    print(json.dumps(plan_entries(request["configs"])))


if __name__ == "__main__":
    main()
