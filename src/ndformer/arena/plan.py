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


def arena_seconds(plans: list[dict[str, Any]], cost_rounds: int) -> float:
    """Estimated wall time of an arena: every entry's run, its worker's start, and the
    cost measurement's ``cost_rounds`` (plus one warm-up) rounds of one step each."""
    runs = sum(p["seconds"] + WORKER_SECONDS for p in plans)
    costs = (cost_rounds + 1) * sum(p["step_seconds"] for p in plans) + WORKER_SECONDS
    return runs + costs


def plan_lines(labels: list[str], steps: list[int], plans: list[dict[str, Any]],
               cost_rounds: int) -> list[str]:  # fmt: skip
    """The arena's plan as printed before it trains."""
    from ..train.plan import _duration

    lines = ["plan:"]
    width = max(len(label) for label in labels)
    for label, count, plan in zip(labels, steps, plans, strict=True):
        lines.append(
            f"  {label:<{width}}  {count} steps x {plan['step_seconds']:.2f} s, about"
            f" {_duration(plan['seconds'])}, {format_bytes(plan['peak_bytes'])} peak"
        )
    total = arena_seconds(plans, cost_rounds)
    peak = max(p["peak_bytes"] for p in plans)
    lines.append(
        f"  in all   about {_duration(total)} with the cost measurement, at most"
        f" {format_bytes(peak)} at once (one entry trains at a time)"
    )
    return lines


def main() -> None:
    request = json.loads(sys.stdin.read())
    print(json.dumps(plan_entries(request["configs"])))


if __name__ == "__main__":
    main()
