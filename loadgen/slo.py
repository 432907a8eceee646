"""Service-level objectives for goodput: `--goodput ttft:MS tpot:MS e2el:MS`."""

from __future__ import annotations

SLO_METRICS = ("ttft", "tpot", "e2el")


def parse_slos(items: list[str] | None) -> dict[str, float]:
    """["ttft:500", "tpot:50"] -> {"ttft": 500.0, "tpot": 50.0} (milliseconds)."""
    slos: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition(":")
        if not sep or name not in SLO_METRICS:
            raise ValueError(f"bad SLO {item!r}: want NAME:MS with NAME in {', '.join(SLO_METRICS)}")
        try:
            slos[name] = float(value)
        except ValueError:
            raise ValueError(f"bad SLO {item!r}: {value!r} is not a number of milliseconds") from None
        if slos[name] < 0:
            raise ValueError(f"bad SLO {item!r}: must be >= 0")
    return slos


def meets_slos(slos: dict[str, float], values_ms: dict[str, float | None]) -> bool:
    """True when every SLO given holds; an undefined value (None) fails its SLO."""
    for name, limit_ms in slos.items():
        value = values_ms.get(name)
        if value is None or value > limit_ms:
            return False
    return True
