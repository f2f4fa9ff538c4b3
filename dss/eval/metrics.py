"""Safety metrics from per-example verdicts: % safe with counts, overall and per category."""

from __future__ import annotations

from typing import Sequence

__all__ = ["summarize"]


def _pct(safe: int, n: int) -> float | None:
    return 100.0 * safe / n if n else None


def summarize(categories: Sequence[str | None], verdicts: Sequence[dict], judge=None) -> dict:
    """{"n", "n_safe", "safe_pct", "per_category": {cat: {"n", "n_safe", "safe_pct"}}} plus the
    judge's own extras (`judge.extras(verdicts)`, e.g. keyword ASR). Records without a category
    count only in the totals."""
    if len(categories) != len(verdicts):
        raise ValueError(f"summarize: {len(categories)} categories for {len(verdicts)} verdicts")
    per: dict[str, list[int]] = {}
    for category, verdict in zip(categories, verdicts):
        if category is not None:
            counts = per.setdefault(str(category), [0, 0])
            counts[0] += 1
            counts[1] += bool(verdict["safe"])
    n_safe = sum(bool(v["safe"]) for v in verdicts)
    out = {"n": len(verdicts), "n_safe": n_safe, "safe_pct": _pct(n_safe, len(verdicts)),
           "per_category": {c: {"n": n, "n_safe": s, "safe_pct": _pct(s, n)} for c, (n, s) in sorted(per.items())}}
    if hasattr(judge, "extras"):
        out.update(judge.extras(verdicts))
    return out
