"""Cost tables measured on this machine: the profiler (`measure.py`), its on-disk cache keyed by
everything that changes the numbers (`cache.py`) and the `neo-async profile` command (`cli.py`).
The tables themselves are `neo_async.sched.cost_tables.MeasuredCosts` (pure)."""
