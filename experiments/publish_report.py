"""Copies a reproduction run (``runs/reproduce_quick``) to the committed ``docs/report/``.

    python -m experiments.reproduce --quick --publish_only     # the last quick run
    python -m experiments.reproduce --quick --publish          # run everything, then copy
    python -m experiments.reproduce --only=introspective_tips --publish \
        --publish_dir=docs/report_full                          # one full (not quick) run

What lands in ``docs/report/``: ``report.md`` (section anchors ``#entry-<name>``, image
links relative to it), ``metrics.json``, the PNGs report.md links to, downscaled and
palette-quantised so the folder stays under ``MAX_BYTES``, and ``README.md`` saying which
entries it holds, when each ran, and whether the run is partial. Nothing else is copied.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import time
from collections.abc import Sequence

MAX_BYTES = 5 * 2**20
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def _shrink(src: pathlib.Path, dst: pathlib.Path, max_width: int) -> None:
    """Saves ``src`` as a palette PNG at most ``max_width`` pixels wide."""
    from PIL import Image

    with Image.open(src) as im:
        im = im.convert("RGB")
        if im.width > max_width:
            im = im.resize((max_width, round(im.height * max_width / im.width)),
                           Image.Resampling.LANCZOS)
        im = im.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.save(dst, optimize=True)


def _clear(dest: pathlib.Path) -> None:
    """Removes what an earlier publish wrote (only .md/.json/.png files, then empty folders)."""
    if not dest.exists():
        return
    for p in sorted(dest.rglob("*"), reverse=True):
        if p.is_file() and p.suffix in (".md", ".json", ".png"):
            p.unlink()
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()


def publish(workdir: pathlib.Path, dest: pathlib.Path, registry: Sequence[str] = (),
            max_bytes: int = MAX_BYTES) -> pathlib.Path:
    """Copies ``workdir``'s report to ``dest`` (see the module docstring).

    Args:
        workdir: a reproduce run folder holding report.md and metrics.json.
        dest: the published folder (its earlier .md/.json/.png files are replaced).
        registry: every registered entry name; those missing from the run make it partial.
        max_bytes: size cap of ``dest``; images are shrunk further until it fits.

    Returns:
        ``dest``.

    Raises:
        FileNotFoundError: ``workdir`` has no report.md or metrics.json (run it first).
        ValueError: even the smallest images leave ``dest`` above ``max_bytes``.
    """
    workdir, dest = pathlib.Path(workdir), pathlib.Path(dest)
    report, metrics_path = workdir / "report.md", workdir / "metrics.json"
    if not report.exists() or not metrics_path.exists():
        raise FileNotFoundError(
            f"{workdir} has no report.md/metrics.json: run `python -m experiments.reproduce "
            f"--quick` first (or pass --workdir=<a run folder>)")
    text = report.read_text()
    metrics = json.loads(metrics_path.read_text())
    links: dict[str, pathlib.Path] = {}

    def relink(m: re.Match) -> str:
        alt, link = m.group(1), m.group(2)
        src = pathlib.Path(link)
        src = src if src.is_absolute() else workdir / src
        if not src.exists() or src.suffix.lower() != ".png":
            return f"*(image `{link}` not published)*"
        try:
            rel = src.resolve().relative_to(workdir.resolve())
        except ValueError:
            rel = pathlib.Path("external") / src.name
        links[rel.as_posix()] = src
        return f"![{alt}]({rel.as_posix()})"

    text = _IMAGE.sub(relink, text)
    _clear(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "report.md").write_text(text)
    (dest / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    (dest / "README.md").write_text(_readme(workdir, metrics, registry, dest))
    for width in (900, 700, 520, 400):
        for rel, src in links.items():
            _shrink(src, dest / rel, width)
        size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
        if size <= max_bytes:
            return dest
    raise ValueError(f"{dest} is {size / 2**20:.1f} MB with images at 400 px; the cap is "
                     f"{max_bytes / 2**20:.1f} MB: drop plots from the entries")


def _readme(workdir: pathlib.Path, metrics: dict, registry: Sequence[str],
            dest: pathlib.Path = pathlib.Path("docs/report")) -> str:
    from jaxlm.utils.report import anchor

    missing = [n for n in registry if n not in metrics]
    modes = {("quick" if m.get("quick") else "full") for m in metrics.values()}
    partial = bool(missing) or len(modes) > 1
    if modes == {"quick"}:
        command = "python -m experiments.reproduce --quick --publish_only"
    else:  # a full run of some entries, published to its own folder
        command = (f"python -m experiments.reproduce --only={','.join(metrics)} --publish "
                   f"--publish_dir={dest}")
    if modes == {"quick"}:
        lines = [
            "# Published reproduction report\n",
            ("**PARTIAL: not one fresh run of every entry** (the entries below ran one at a "
             "time; the rest are listed at the end).\n") if partial else "",
            f"Copied from `{workdir}` on {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC by "
            f"`{command}`. Read "
            "[report.md](report.md); the numbers are in [metrics.json](metrics.json), and the "
            "README's status table is checked against them by `tests/test_readme_numbers.py` "
            "(`python scripts/readme_numbers.py --write` rewrites it).\n",
        ]
    else:
        lines = [
            "# Published full run\n",
            "A full (not `--quick`) run of the entries below, published on its own; the quick "
            "run of every entry (the README's status table) is in `docs/report/`.\n",
            f"Copied from `{workdir}` on {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; "
            f"rerun with `{command}`. Read [report.md](report.md); the numbers are in "
            "[metrics.json](metrics.json).\n",
        ]
        missing = []  # a full run of chosen entries is not a partial quick run
    lines += [
        "| entry | verdict | mode | wall seconds | finished (UTC) | load (1 min) |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in metrics.items():
        load = m.get("loadavg_1m")
        lines.append(f"| [{name}](report.md#{anchor(name)}) | {m['verdict']} | "
                     f"{'quick' if m.get('quick') else 'full'} | {m.get('seconds', 0):.0f} | "
                     f"{m.get('finished_utc', 'unknown')} | "
                     f"{'' if load is None else f'{load:.1f}'} |")
    if missing:
        lines.append(f"\nNot in this report (not run): {', '.join(missing)}.")
    lines.append("\nTimings (wall seconds, tok/s, speedups) were taken on the machine named in "
                 "each section; a 1-minute load average above its core count means other jobs "
                 "shared it, and those timings are slower and noisier than on a quiet machine.")
    if "re-rendered from the run's saved results" in (workdir / "report.md").read_text():
        lines.append("\nA section marked *re-rendered* was rebuilt from that run's saved "
                     "results after a change to verdict code only; its numbers are the run's.")
    lines.append("")
    return "\n".join(x for x in lines if x != "") + "\n"
