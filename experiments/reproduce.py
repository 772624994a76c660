"""The main job: runs every registered paper reproduction and writes a report.

    python -m experiments.reproduce --quick              # all entries, small
    python -m experiments.reproduce --only=smollm2 --quick
    python -m experiments.reproduce --list

Writes ``<workdir>/report.md`` (one section per entry: claim, setup, table,
plots, verdict, rerun command) and ``<workdir>/metrics.json``.
Each entry lives in its own module named in ``REGISTRY`` and exposes
``NAME``, ``TITLE`` and ``run(ctx: RunContext) -> Section``.
"""

from __future__ import annotations

import importlib
import json
import pathlib
import sys
import time
import traceback

from absl import app, flags, logging

# Entry name -> module exposing run(ctx) -> Section. Edited by the main session.
REGISTRY: dict[str, str] = {
    "smollm2": "experiments.repro_smollm2",
    "train_lm": "experiments.repro_train_lm",
    "keyformer": "experiments.repro_keyformer",
    "mamba_nd": "experiments.repro_mamba_nd",
    "meanfield_icl": "experiments.repro_meanfield_icl",
    "antiunify": "experiments.repro_antiunify",
    "introspective_tips": "experiments.repro_introspective_tips",
    "llmsrec_syn": "experiments.repro_llmsrec_syn",
    "luminate": "experiments.repro_luminate",
    "explain": "experiments.repro_explain",
    "tacs": "experiments.repro_tacs",
    "refresh_knowledge": "experiments.repro_refresh_knowledge",
    "atom": "experiments.repro_atom",
}

_ONLY = flags.DEFINE_list("only", [], "Entry names to run (default: all). See --list.")
_QUICK = flags.DEFINE_bool("quick", False, "Small versions (~3 min each on 2 CPU cores).")
_LIST = flags.DEFINE_bool("list", False, "Print the registered entry names and exit.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default runs/reproduce[_quick]).")
_SEED = flags.DEFINE_integer("seed", 0, "Root seed passed to every entry.")
_KEEP_GOING = flags.DEFINE_bool(
    "keep_going", True, "Record a failing entry in the report and continue with the next."
)


def main(argv):
    del argv
    from tqdm.auto import tqdm

    from jaxlm.utils.report import RunContext, Section, render_section

    if _LIST.value:
        for name in REGISTRY:
            print(name)
        return 0
    names = _ONLY.value or list(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        sys.exit(f"unknown entry {unknown}; registered: {', '.join(REGISTRY)} (see --list)")
    workdir = pathlib.Path(
        _WORKDIR.value or ("runs/reproduce_quick" if _QUICK.value else "runs/reproduce")
    )
    workdir.mkdir(parents=True, exist_ok=True)
    metrics_path = workdir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    sections_dir = workdir / "sections"
    sections_dir.mkdir(exist_ok=True)

    outer = tqdm(names, desc="reproduce", position=0)
    failed = []
    for name in outer:
        outer.set_postfix_str(name)
        outdir = workdir / name
        outdir.mkdir(exist_ok=True)
        ctx = RunContext(
            quick=_QUICK.value,
            outdir=outdir,
            seed=_SEED.value,
            progress=lambda total, desc="", _n=name: tqdm(
                total=total, desc=f"  {_n} {desc}".rstrip(), position=1, leave=False
            ),
        )
        t0 = time.time()
        try:
            module = importlib.import_module(REGISTRY[name])
            sec: Section = module.run(ctx)
        except Exception as e:  # one failing entry must not hide the others
            if not _KEEP_GOING.value:
                raise
            logging.error("entry %s failed:\n%s", name, traceback.format_exc())
            failed.append(name)
            sec = Section(
                title=f"{name}: failed",
                claim="(entry failed before producing results)",
                setup="",
                table=[],
                verdict="not run",
                verdict_note=f"`{type(e).__name__}: {e}`",
                command=f"python -m experiments.reproduce --only={name}"
                + (" --quick" if _QUICK.value else ""),
            )
        elapsed = time.time() - t0
        text = render_section(name, sec, workdir)
        text += f"\n_ran in {elapsed:.0f} s ({'quick' if _QUICK.value else 'full'})_\n"
        (sections_dir / f"{name}.md").write_text(text)
        metrics[name] = {
            "verdict": sec.verdict,
            "seconds": elapsed,
            "quick": _QUICK.value,
            **sec.metrics,
        }
        _write_report(workdir, metrics)
        metrics_path.write_text(json.dumps(metrics, indent=2, default=str))
    print(f"report: {workdir / 'report.md'}")
    if failed:
        print(f"failed entries: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _write_report(workdir: pathlib.Path, metrics: dict) -> None:
    lines = ["# jaxlm reproduction report\n", "| entry | verdict | seconds |", "|---|---|---|"]
    for name in REGISTRY:
        if name in metrics:
            m = metrics[name]
            lines.append(f"| [{name}](#) | {m['verdict']} | {m['seconds']:.0f} |")
    lines.append("")
    for name in REGISTRY:
        p = workdir / "sections" / f"{name}.md"
        if p.exists():
            lines.append(p.read_text())
    tmp = workdir / "report.md.tmp"
    tmp.write_text("\n".join(lines))
    tmp.replace(workdir / "report.md")


if __name__ == "__main__":
    app.run(main)
