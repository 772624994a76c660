"""The main job: runs every registered paper reproduction and writes a report.

    python -m experiments.reproduce --quick              # all entries, small
    python -m experiments.reproduce --only=smollm2 --quick
    python -m experiments.reproduce --list
    python -m experiments.reproduce --quick --publish    # run all, then copy to docs/report/
    python -m experiments.reproduce --quick --publish_only   # copy the last quick run

Writes ``<workdir>/report.md`` (one section per entry: claim, what was measured,
setup, table, plots, evidence, the derived verdict and why, rerun command) and
``<workdir>/metrics.json`` (per entry: verdict, why, wall seconds, finish time, numbers).
``--publish`` copies the report to ``docs/report/`` (see ``experiments.publish_report``).
Stdout is progress bars and one line per entry (name, verdict, seconds), ending with the
report's path; the console shows warnings and errors only, and each entry's full log (INFO and
up) is kept in ``<workdir>/<name>/log.txt``. metrics.json also records each entry's CPU
seconds (user+sys), so a budget can be judged on a loaded machine.
Each entry lives in its own module named in ``REGISTRY`` and exposes
``NAME``, ``TITLE`` and ``run(ctx: RunContext) -> Section``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging as py_logging
import os
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
_PUBLISH = flags.DEFINE_bool(
    "publish", False, "After the run, copy the report (report.md, metrics.json, downscaled "
    "PNGs) to --publish_dir."
)
_PUBLISH_ONLY = flags.DEFINE_bool(
    "publish_only", False, "Run nothing; copy the last run in --workdir to --publish_dir."
)
_PUBLISH_DIR = flags.DEFINE_string("publish_dir", "docs/report", "Where --publish copies to.")


# Libraries whose INFO lines are noise even in the per-entry log file.
_NOISY = ("jax", "jax._src", "matplotlib", "PIL", "urllib3", "h5py", "orbax", "tensorflow",
          "transformers", "hivemind", "absl.testing")


class _DropLibraryInfo(py_logging.Filter):
    """Drops INFO/DEBUG records emitted from rouge_score (it logs "Using default tokenizer."
    through absl's logger once per scorer: hundreds of lines per run); warnings pass."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return record.levelno >= py_logging.WARNING or "rouge_score" not in record.pathname


def _quiet_logs() -> None:
    """Console (stderr) gets warnings and errors only, so stdout/stderr stay progress bars and
    one line per entry; INFO still reaches each entry's log file (``_entry_log``)."""
    import warnings

    logging.set_verbosity(logging.INFO)  # records are made; the handlers decide where they go
    py_logging.getLogger().setLevel(py_logging.INFO)  # Python loggers too
    logging.get_absl_handler().setLevel(py_logging.WARNING)
    logging.get_absl_handler().addFilter(_DropLibraryInfo())
    for name in _NOISY:
        py_logging.getLogger(name).setLevel(py_logging.WARNING)
    py_logging.captureWarnings(True)  # Python warnings -> the log (console and file)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


@contextlib.contextmanager
def _entry_log(path: pathlib.Path):
    """While one entry runs, every log record at INFO and above (absl, Python logging,
    Python warnings) is appended to ``path``: the entry's own log, kept after the run."""
    handler = py_logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(py_logging.INFO)
    handler.addFilter(_DropLibraryInfo())
    handler.setFormatter(py_logging.Formatter(
        "%(asctime)s %(levelname).1s %(name)s %(filename)s:%(lineno)d] %(message)s"))
    root = py_logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        handler.close()


def main(argv):
    del argv
    from tqdm.auto import tqdm

    from jaxlm.utils.report import RunContext, Section, render_section

    if _LIST.value:
        for name in REGISTRY:
            print(name)
        return 0
    _quiet_logs()
    names = _ONLY.value or list(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        sys.exit(f"unknown entry {unknown}; registered: {', '.join(REGISTRY)} (see --list)")
    workdir = pathlib.Path(
        _WORKDIR.value or ("runs/reproduce_quick" if _QUICK.value else "runs/reproduce")
    )
    if _PUBLISH_ONLY.value:
        return _publish(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    metrics_path = workdir / "metrics.json"
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
        cpu0 = _cpu_seconds()
        log_path = outdir / "log.txt"
        with _entry_log(log_path):
            logging.info("entry %s start (%s)", name, "quick" if _QUICK.value else "full")
            try:
                module = importlib.import_module(REGISTRY[name])
                sec: Section = module.run(ctx)
            except Exception as e:  # one failing entry must not hide the others
                if not _KEEP_GOING.value:
                    raise
                (outdir / "traceback.txt").write_text(traceback.format_exc())
                logging.error("entry %s failed: %s: %s (traceback in %s)", name,
                              type(e).__name__, e, outdir / "traceback.txt")
                failed.append(name)
                sec = Section.failed(
                    name, e, f"python -m experiments.reproduce --only={name}"
                    + (" --quick" if _QUICK.value else ""))
            elapsed = time.time() - t0
            cpu = _cpu_seconds() - cpu0
            logging.info("entry %s done: %s, %.0f s wall, %.0f s CPU (user+sys)", name,
                         sec.verdict.value, elapsed, cpu)
        text = render_section(name, sec, workdir)
        text += f"\n_ran in {elapsed:.0f} s ({'quick' if _QUICK.value else 'full'})_\n"
        (sections_dir / f"{name}.md").write_text(text)
        # re-read just before writing: another run (or a re-render) may have updated other
        # entries since this one started
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        metrics[name] = {
            **sec.metrics,
            "verdict": sec.verdict.value,
            "why": sec.why,
            "seconds": elapsed,
            "cpu_seconds": cpu,  # user+sys of this process over the entry (all threads)
            "log": str(log_path.relative_to(workdir)),
            "quick": _QUICK.value,
            "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "loadavg_1m": os.getloadavg()[0],  # > CPU count: timings were taken under load
        }
        _write_report(workdir, metrics)
        tmp = metrics_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(metrics, indent=2, default=str))
        tmp.replace(metrics_path)
        outer.write(f"{name}: {sec.verdict.value} ({elapsed:.0f} s)")
    outer.close()
    rc = 0
    if failed:
        print(f"failed entries: {', '.join(failed)}", file=sys.stderr)
        rc = 1
    if _PUBLISH.value:
        _publish(workdir)
    print(f"report: {workdir / 'report.md'}")
    return rc


def _cpu_seconds() -> float:
    """user+sys CPU seconds of this process so far (every thread; XLA's included)."""
    t = os.times()
    return t.user + t.system


def _publish(workdir: pathlib.Path) -> int:
    from experiments.publish_report import publish

    out = publish(workdir, pathlib.Path(_PUBLISH_DIR.value), registry=list(REGISTRY))
    print(f"published: {out / 'report.md'}")
    return 0


def _write_report(workdir: pathlib.Path, metrics: dict) -> None:
    from jaxlm.utils.report import RULE, anchor

    lines = ["# jaxlm reproduction report\n",
             f"Verdict rule (computed by `jaxlm.utils.report.judge`, never written by hand): "
             f"{RULE}\n",
             "| entry | verdict | seconds | finished (UTC) |", "|---|---|---|---|"]
    for name in REGISTRY:
        if name in metrics:
            m = metrics[name]
            lines.append(f"| [{name}](#{anchor(name)}) | {m['verdict']} | {m['seconds']:.0f} | "
                         f"{m.get('finished_utc', '')} |")
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
