"""Report sections for the reproduction suite (``experiments/reproduce.py``).

A reproduction entry is a function ``run(ctx: RunContext) -> Section``. It
writes its plots under ``ctx.outdir`` and returns the section text; the suite
assembles ``runs/<name>/report.md`` and ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

VERDICTS = ("reproduced", "partially reproduced", "not reproduced", "not run")


@dataclasses.dataclass
class RunContext:
    """What a reproduction entry gets from the suite.

    Attributes:
        quick: run the small (~3 minutes on 2 CPU cores) version.
        outdir: a folder for this entry's plots and artifacts.
        seed: root seed.
        progress: ``progress(total)`` returns a tqdm-like bar (``update``,
            ``set_postfix_str``, ``close``) for the entry's own steps.
    """

    quick: bool
    outdir: pathlib.Path
    seed: int = 0
    progress: Callable[..., Any] | None = None

    def bar(self, total: int, desc: str = ""):
        if self.progress is None:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, leave=False)
        return self.progress(total=total, desc=desc)


@dataclasses.dataclass
class Section:
    """One paper's section of the report.

    Attributes:
        title: heading, e.g. "Keyformer: 50% KV cache".
        claim: the paper's headline claim, in our words, with its numbers.
        setup: what we ran (model, data, sizes, seeds).
        table: rows (dicts with the same keys) rendered as a markdown table.
        plots: image paths relative to the report folder (or absolute).
        verdict: one of VERDICTS.
        verdict_note: one or two sentences on why.
        command: the command that reruns this entry.
        metrics: numbers for metrics.json.
        extra: further markdown (more tables, notes).
    """

    title: str
    claim: str
    setup: str
    table: Sequence[dict[str, Any]]
    verdict: str
    verdict_note: str
    command: str
    plots: Sequence[str] = ()
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Renders dict rows as a GitHub markdown table (floats to 4 significant digits)."""
    if not rows:
        return "_(no rows)_\n"
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def render_section(name: str, sec: Section, report_dir: pathlib.Path) -> str:
    parts = [f"## {sec.title}\n", f"*entry:* `{name}`\n"]
    parts.append(f"**Claim.** {sec.claim}\n")
    parts.append(f"**Our setup.** {sec.setup}\n")
    parts.append(markdown_table(sec.table))
    for p in sec.plots:
        path = pathlib.Path(p)
        if path.is_absolute():
            try:
                path = path.relative_to(report_dir)
            except ValueError:
                pass
        parts.append(f"![{path.stem}]({path.as_posix()})\n")
    if sec.extra:
        parts.append(sec.extra.rstrip() + "\n")
    parts.append(f"**Verdict: {sec.verdict}.** {sec.verdict_note}\n")
    parts.append(f"Rerun: `{sec.command}`\n")
    return "\n".join(parts)
