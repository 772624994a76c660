"""Report sections and the one verdict rule of the reproduction suite (experiments/reproduce).

A reproduction entry is a function ``run(ctx: RunContext) -> Section``. It
writes its plots under ``ctx.outdir`` and returns the section text; the suite
assembles ``runs/<name>/report.md`` and ``metrics.json``.

Verdicts are never written by hand. An entry declares its evidence as a list of
:class:`Claim` and :func:`judge` derives the :class:`Verdict` from it by the
rule in ``RULE`` (also in DESIGN.md, "Verdicts")::

    from jaxlm.utils.report import Claim, judge

    claims = [
        Claim("Keyformer >= H2O at 50% KV (ROUGE-L vs full)", measured=True,
              ci_or_exact=True, own_paper=True, circular=False, holds=False),
        Claim("H2O beats a recent window (H2O paper)", measured=True, ci_or_exact=True,
              own_paper=False, circular=False, holds=True),
    ]
    ruling = judge(claims)   # ruling.verdict is Verdict.NOT_REPRODUCED, ruling.why says why
"""

from __future__ import annotations

import dataclasses
import enum
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any


class Verdict(str, enum.Enum):
    """The verdict vocabulary. ``NOT_RUN`` is only for an entry that failed before judging."""

    REPRODUCED = "reproduced"
    PARTIAL = "partially reproduced"
    NOT_REPRODUCED = "not reproduced"
    NOT_TESTABLE = "not testable at this scale"
    SIMULATED = "simulated only"
    NOT_RUN = "not run"

    def __str__(self) -> str:
        return self.value


VERDICTS = tuple(v.value for v in Verdict)

RULE = (
    "'reproduced' needs every part of the seed paper's own headline claim measured here, at "
    "our scale, with a confidence interval or an exact check, and holding (and no measured "
    "claim of the paper failing); a measured headline claim that fails makes it 'not "
    "reproduced' (or 'partially reproduced' when another headline part holds); some measured "
    "support short of that is 'partially reproduced'; a model agreeing with tables derived "
    "from the same model (or any unmeasured prediction) is 'simulated only'; a claim we cannot "
    "test at our scale is 'not testable at this scale'; an earlier paper's result never stands "
    "in for the seed paper's."
)


@dataclasses.dataclass(frozen=True)
class Claim:
    """One piece of declared evidence for a verdict.

    Attributes:
        text: the claim, one line, with the paper's number where it has one.
        measured: True when we measured it at our scale in this run (a real run of the
            mechanism, not a cost model's or simulator's prediction).
        ci_or_exact: True when the measurement carries a confidence interval (or a
            seed spread) that decides it, or is an exact check (equality, a bound proved
            by enumeration, a tolerance set by the dtype).
        own_paper: True for the seed paper's own claim; False for anything else (an
            earlier paper's result, our own substitute target or control): shown for
            context, never counted.
        circular: True when "agreement" is with tables derived from the same model or
            code (a simulator reproducing its own spec tables).
        holds: True / False as measured; None when it cannot be tested at our scale.
        headline: True when this is (a part of) the seed paper's headline claim;
            False for a secondary claim of the paper.
        result: what we measured, one line with the number (shown in the report).
    """

    text: str
    measured: bool
    ci_or_exact: bool
    own_paper: bool
    circular: bool
    holds: bool | None
    headline: bool = True
    result: str = ""

    def __post_init__(self):
        if not self.text or "\n" in self.text:
            raise ValueError(f"Claim.text must be one non-empty line, got {self.text!r}")
        if not (self.holds is None or isinstance(self.holds, bool)):
            raise ValueError(f"Claim.holds must be True, False or None, got {self.holds!r} "
                             f"(claim {self.text!r}); pass bool(...) for numpy booleans")

    @property
    def status(self) -> str:
        """One of 'untestable', 'simulated', 'refuted', 'supported', 'indicated'.

        'supported' = measured, not circular, holds, with a CI or exact check;
        'indicated' = the same without a CI or exact check.
        """
        if self.holds is None:
            return "untestable"
        if self.circular or not self.measured:
            return "simulated"
        if not self.holds:
            return "refuted"
        return "supported" if self.ci_or_exact else "indicated"


_STATUS_WORDS = {
    "untestable": "not testable at this scale",
    "simulated": "simulated only (a model's prediction or agreement with tables from the same "
                 "model)",
    "refuted": "measured, does not hold",
    "supported": "measured with a CI or exact check, holds",
    "indicated": "measured, holds, but without a CI or exact check that decides it",
}


@dataclasses.dataclass(frozen=True)
class Ruling:
    """What :func:`judge` returns: the verdict and the sentence saying why it follows."""

    verdict: Verdict
    why: str


def _quote(cs: Sequence[Claim]) -> str:
    return " and ".join(f"'{c.text}'" for c in cs)


def _neg(cs: Sequence[Claim]) -> str:
    return "does not hold" if len(cs) == 1 else "do not hold"


def judge(claims: Sequence[Claim]) -> Ruling:
    """Derives the verdict from declared evidence by the rule in ``RULE``.

    Only the seed paper's own claims (``own_paper=True``) count. With ``head`` its
    headline claims and statuses as in :attr:`Claim.status`:

    1. some headline claim refuted: 'not reproduced', or 'partially reproduced' when
       another headline claim is supported or indicated;
    2. every headline claim supported: 'reproduced' (or 'partially reproduced' when a
       secondary claim of the paper is refuted);
    3. some own claim supported or indicated: 'partially reproduced';
    4. some own claim simulated (circular or unmeasured): 'simulated only';
    5. otherwise (everything untestable): 'not testable at this scale'.

    Args:
        claims: the evidence; at least one own-paper headline claim.

    Returns:
        A :class:`Ruling` with the verdict and the reason in one or two sentences.

    Raises:
        ValueError: no own-paper headline claim was declared.
    """
    own = [c for c in claims if c.own_paper]
    head = [c for c in own if c.headline]
    if not head:
        raise ValueError(
            "judge() needs the seed paper's own headline claim: declare at least one "
            "Claim(..., own_paper=True, headline=True); earlier papers' results never stand in")
    st = {c: c.status for c in own}
    h_ref = [c for c in head if st[c] == "refuted"]
    h_sup = [c for c in head if st[c] == "supported"]
    h_pos = [c for c in head if st[c] in ("supported", "indicated")]
    o_ref = [c for c in own if st[c] == "refuted"]
    o_pos = [c for c in own if st[c] in ("supported", "indicated")]
    o_sim = [c for c in own if st[c] == "simulated"]
    if h_ref and not h_pos:
        v, why = Verdict.NOT_REPRODUCED, (
            f"the headline claim {_quote(h_ref)} {'was' if len(h_ref) == 1 else 'were'} "
            f"measured here and {_neg(h_ref)}")
    elif h_ref:
        v, why = Verdict.PARTIAL, (
            f"part of the headline claim holds ({_quote(h_pos)}) but {_quote(h_ref)} "
            f"{'was' if len(h_ref) == 1 else 'were'} measured and {_neg(h_ref)}")
    elif len(h_sup) == len(head) and not o_ref:
        v, why = Verdict.REPRODUCED, (
            f"the headline claim {_quote(head)} was measured here with a CI or an exact check "
            "and holds")
    elif len(h_sup) == len(head):
        v, why = Verdict.PARTIAL, (
            f"the headline claim holds with a CI or exact check, but {_quote(o_ref)} "
            f"{'was' if len(o_ref) == 1 else 'were'} measured and {_neg(o_ref)}")
    elif o_pos:
        missing = "; ".join(f"'{c.text}': {_STATUS_WORDS[st[c]]}" for c in head
                            if c not in h_sup)
        v, why = Verdict.PARTIAL, (
            f"measured support for {_quote(o_pos)}, but not for the whole headline claim with a "
            f"CI or exact check ({missing})")
    elif o_sim:
        v, why = Verdict.SIMULATED, (
            f"the paper's claims appear only in a model or in tables derived from the same model "
            f"({_quote(o_sim)}); nothing of it was measured here")
    else:
        v, why = Verdict.NOT_TESTABLE, (
            f"the headline claim {_quote(head)} cannot be tested at our scale")
    prior = [c for c in claims if not c.own_paper]
    if prior:
        why += f". Not counted (not the seed paper's claims): {_quote(prior)}"
    return Ruling(v, why[0].upper() + why[1:] + ".")


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
    """One paper's section of the report. The verdict is derived, never passed.

    Attributes:
        title: heading, e.g. "Keyformer: 50% KV cache".
        claim: the paper's headline claim in one line, with its numbers.
        measured: what we measured, in one line, with our numbers.
        setup: what we ran (model, data, sizes, seeds).
        table: rows (dicts with the same keys) rendered as a markdown table.
        claims: the declared evidence (:class:`Claim`); :func:`judge` turns it into
            ``verdict`` and ``why``.
        command: the command that reruns this entry.
        plots: image paths relative to the report folder (or absolute).
        metrics: numbers for metrics.json.
        extra: further markdown (more tables, notes).
        note: context for the verdict (scale, caveats); it cannot change the verdict.
        failure: set only by :meth:`failed` (the entry raised): verdict 'not run'.
        verdict: derived (read-only).
        why: derived: the sentence saying why the verdict follows from the claims.
    """

    title: str
    claim: str
    setup: str
    table: Sequence[dict[str, Any]]
    command: str
    claims: Sequence[Claim] = ()
    measured: str = ""
    plots: Sequence[str] = ()
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: str = ""
    note: str = ""
    failure: str = ""
    verdict: Verdict = dataclasses.field(init=False)
    why: str = dataclasses.field(init=False)

    def __post_init__(self):
        if self.failure:
            self.verdict, self.why = Verdict.NOT_RUN, self.failure
            return
        for field in ("claim", "measured"):
            text = getattr(self, field)
            if not text.strip() or "\n" in text.strip():
                raise ValueError(f"Section {self.title!r}: {field} must be one non-empty line "
                                 f"(got {text!r})")
        for c in self.claims:
            if not isinstance(c, Claim):
                raise TypeError(f"Section {self.title!r}: claims must be Claim objects, "
                                f"got {c!r}")
        ruling = judge(self.claims)
        self.verdict, self.why = ruling.verdict, ruling.why

    @classmethod
    def failed(cls, name: str, error: BaseException, command: str) -> Section:
        """The section of an entry that raised before producing results."""
        return cls(title=f"{name}: failed", claim="(entry failed before producing results)",
                   setup="", table=[], command=command,
                   failure=f"`{type(error).__name__}: {error}`")


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


def anchor(name: str) -> str:
    """The section anchor of entry ``name`` in report.md (``#entry-<name>``)."""
    return "entry-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def plot_link(name: str, plot: str | pathlib.Path, report_dir: pathlib.Path) -> pathlib.Path:
    """The link to ``plot`` relative to ``report_dir`` (where report.md lives).

    Entries give plots as absolute paths, paths relative to the working directory (under
    ``report_dir``) or bare names inside their own folder ``report_dir / name``.
    """
    path = pathlib.Path(plot)
    root = report_dir.resolve()
    if not path.is_absolute():
        for cand in (report_dir / name / path, report_dir / path, path):
            if cand.exists():
                path = cand.resolve()
                break
        else:
            return path
    try:
        return path.resolve().relative_to(root)
    except ValueError:
        return path


def render_section(name: str, sec: Section, report_dir: pathlib.Path) -> str:
    parts = [f'<a id="{anchor(name)}"></a>\n', f"## {sec.title}\n", f"*entry:* `{name}`\n"]
    parts.append(f"**Claim.** {sec.claim}\n")
    if sec.measured:
        parts.append(f"**Measured.** {sec.measured}\n")
    parts.append(f"**Our setup.** {sec.setup}\n")
    parts.append(markdown_table(sec.table))
    for p in sec.plots:
        path = plot_link(name, p, report_dir)
        parts.append(f"![{path.stem}]({path.as_posix()})\n")
    if sec.extra:
        parts.append(sec.extra.rstrip() + "\n")
    if sec.claims:
        parts.append("**Evidence.**\n")
        for c in sec.claims:
            who = "headline" if c.own_paper and c.headline else (
                "secondary" if c.own_paper else "not the seed paper's claim, not counted")
            parts.append(f"- {c.text} ({who}): *{_STATUS_WORDS[c.status]}*"
                         + (f". {c.result}" if c.result else ""))
        parts.append("")
    parts.append(f"**Verdict: {sec.verdict.value}.** {sec.why}"
                 + (f" {sec.note}" if sec.note else "") + "\n")
    parts.append(f"Rerun: `{sec.command}`\n")
    return "\n".join(parts)
