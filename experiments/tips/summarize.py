"""Paired tips-vs-control differences from an episode log (also a killed or partial run).

    python -m experiments.tips.summarize runs/reproduce/introspective_tips/episodes.jsonl

Prints every (scenario, method, trial) arm's episode count and mean normalized score, then
the differences ``repro_introspective_tips`` reports (per-game means over seeds, 95%
bootstrap CI over games) for the arms present in the log.
"""

from __future__ import annotations

import collections
import json
import sys


def comparisons(last: int) -> list[tuple[str, tuple, tuple]]:
    """(name, arm a, arm b) pairs; arms are (scenario, method, trial) keys."""
    return [("actor - random", ("S1", "none", 0), ("S1", "random", 0)),
            ("S1 tips - none", ("S1", "tips", last), ("S1", "none", last)),
            ("S1 reflexion - none", ("S1", "reflexion", last), ("S1", "none", last)),
            ("S1 tips - reflexion", ("S1", "tips", last), ("S1", "reflexion", last)),
            ("S1 raw - none", ("S1", "raw", last), ("S1", "none", last)),
            ("oracle tips - none", ("S1", "oracle_tips", last), ("S1", "none", last)),
            ("S2 expert tips - none", ("S2", "tips", last), ("S1", "none", last)),
            ("S2 - S1, first trial", ("S2", "tips", 0), ("S1", "tips", 0)),
            ("S3 consolidated - none", ("S3-test", "tips", 0), ("S3-test-none", "none", 0))]


def main(path: str) -> None:
    from experiments.repro_introspective_tips import paired

    rows = [json.loads(x) for x in open(path) if x.strip()]
    if not rows:
        raise SystemExit(f"{path}: no episodes")
    arms = collections.defaultdict(list)
    for r in rows:
        arms[(r["scenario"], r["method"], r["trial"])].append(r["norm_score"])
    for k, v in sorted(arms.items()):
        print(f"{'/'.join(map(str, k)):28s} n={len(v):3d} score {sum(v) / len(v):.2f}")
    last = max(r["trial"] for r in rows if r["scenario"] == "S1")
    for name, a, b in comparisons(last):
        p = paired(rows, a, b)
        if p[3]:
            print(f"{name:24s} {p[0]:+.2f} [{p[1]:+.2f}, {p[2]:+.2f}] (n={p[3]} games; "
                  f"{p[4]:.2f} vs {p[5]:.2f})")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m experiments.tips.summarize EPISODES.jsonl")
    main(sys.argv[1])
