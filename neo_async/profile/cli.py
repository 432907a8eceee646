"""`neo-async profile`: the full profile of this machine, model, dtype and thread split; the
tables printed, checked at held-out points, written as JSON (`cost_tables.json`, loadable by
`MeasuredCosts.load` and the `cost_tables` setting; `profile_report.json`) and PNG plots, and
stored in the cache the engine reads at start-up."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from neo_async.config import add_config_flags, config_from_args
from neo_async.logging_setup import configure_logging

_ENGINE_GROUPS = ("model", "cache", "scheduler")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="neo-async profile", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("results/profile"), help="directory for JSON and PNG files")
    parser.add_argument("--quick", action="store_true", help="the start-up profile's coarse grids instead of the full one")
    parser.add_argument("--budget-s", type=float, default=None, help="soft time bound of the measurement of the tables")
    parser.add_argument("--heldout-points", type=int, default=8, help="held-out points per table (0: none)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-cache", action="store_true", help="do not store the tables in the profile cache")
    parser.add_argument("--log-level", default="info")
    add_config_flags(parser, _ENGINE_GROUPS)
    args = parser.parse_args(argv)
    configure_logging("console", args.log_level)
    try:
        config = config_from_args(args, _ENGINE_GROUPS)
    except ValueError as exc:
        parser.error(str(exc))

    from neo_async.profile import cache, heldout, report
    from neo_async.profile.measure import Settings, borrowed, profile_worker
    from neo_async.profile.timing import Timer
    from neo_async.runner.worker import Worker

    config.validate()
    worker = Worker(config.model, config.cache)
    settings = Settings.of(args.quick)
    if args.budget_s is not None:
        settings = dataclasses.replace(settings, budget_s=args.budget_s)
    costs = profile_worker(worker, config, quick=args.quick, settings=settings)
    print(report.format_costs(costs))

    checks: dict[str, list[heldout.Check]] = {}
    step_checks: list[tuple[heldout.StepShape, heldout.Check]] = []
    if args.heldout_points > 0:
        started = time.perf_counter()
        # NOTE: a budget that lets a whole prefill step (~0.5 s) repeat: timed once, it varied 30%
        timer = Timer(worker.device, repeats=settings.repeats, point_budget_s=max(settings.point_budget_s, 3.0))
        with borrowed(worker, config, timer) as points:
            checks = heldout.check_tables(points, costs, args.heldout_points)
            step_checks = heldout.check_steps(points, costs, heldout.step_shapes(worker, config))
        print(f"\nheld-out checks ({time.perf_counter() - started:.1f} s): relative error of the table at points it was "
              "not measured at")
    table_errors = {name: heldout.summary(c) for name, c in checks.items()}
    steps = None
    if step_checks:
        steps = heldout.summary([c for _, c in step_checks])
        for p, (shape, _) in zip(steps["points"], step_checks):
            p["label"] = shape.label()
        print(report.format_errors(table_errors, steps))
        print()
        print(report.format_steps(steps))

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    costs.save(out / "cost_tables.json")
    (out / "profile_report.json").write_text(json.dumps({"key": costs.key, "meta": costs.meta, "heldout": table_errors,
                                                         "steps": steps}, indent=1))
    written = [out / "cost_tables.json", out / "profile_report.json"]
    if not args.no_plots:
        from neo_async.profile import plots
        from neo_async.profile.measure import POINTS

        for name in POINTS:
            path = out / f"{name}.png"
            plots.plot_table(name, getattr(costs, name), checks.get(name, []), path)
            written.append(path)
        if step_checks:
            path = out / "steps.png"
            plots.plot_steps([s.label() for s, _ in step_checks], [c for _, c in step_checks], path)
            written.append(path)
    if not args.no_cache:
        written.append(cache.store(costs))
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 0
