"""README's status table is read from the committed evidence (docs/report/), and the
published report's links work."""

import importlib.util
import json
import pathlib
import re

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "report"


def _script():
    spec = importlib.util.spec_from_file_location("readme_numbers",
                                                  ROOT / "scripts" / "readme_numbers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _metrics():
    path = REPORT / "metrics.json"
    assert path.exists(), ("docs/report/metrics.json is missing: run "
                           "`python -m experiments.reproduce --quick --publish`")
    return json.loads(path.read_text())


def test_readme_table_matches_published_metrics():
    rn = _script()
    problems = rn.check((ROOT / "README.md").read_text(), _metrics())
    assert not problems, ("README status table drifted from docs/report/metrics.json "
                          "(fix: python scripts/readme_numbers.py --write):\n"
                          + "\n".join(problems))


def test_check_catches_a_changed_number():
    rn = _script()
    readme, metrics = (ROOT / "README.md").read_text(), _metrics()
    head, table, tail = rn._split(readme)
    # change the first digit of the first measured number in the table
    row = next(r for r in table.splitlines() if r.startswith("| [`"))
    cell = row.split("|")[4]
    m = re.search(r"\d", cell)
    assert m, f"no number in the first row: {row}"
    d = cell[m.start()]
    bad_cell = cell[: m.start()] + str((int(d) + 1) % 10) + cell[m.start() + 1:]
    bad = head + table.replace(row, row.replace(cell, bad_cell)) + tail
    problems = rn.check(bad, metrics)
    name = row.split("|")[1].strip()
    assert problems and name in problems[0], problems


def test_published_report_links_and_size():
    text = (REPORT / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)
    missing = [x for x in links if not (REPORT / x).is_file()]
    assert not missing, f"report.md links to missing images: {missing}"
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', text))
    for name, m in _metrics().items():
        anchor = "entry-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        assert anchor in anchors, name
        # the section's verdict and the summary row agree with metrics.json
        section = text.split(f'<a id="{anchor}"></a>')[1].split('<a id="entry-')[0]
        assert f"**Verdict: {m['verdict']}.**" in section, name
        assert f"| [{name}](#{anchor}) | {m['verdict']} |" in text, name
    size = sum(p.stat().st_size for p in REPORT.rglob("*") if p.is_file())
    assert size < 5 * 2**20, f"docs/report is {size / 2**20:.1f} MB (cap 5 MB)"


def test_publish_downscales_relinks_and_marks_partial(tmp_path):
    from PIL import Image

    from experiments.publish_report import publish

    run = tmp_path / "run"
    (run / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 2000, 3), dtype=np.uint8)).save(run / "a" / "p.png")
    (run / "report.md").write_text('<a id="entry-a"></a>\n## A\n![p](a/p.png)\n![gone](a/q.png)\n')
    (run / "metrics.json").write_text(json.dumps(
        {"a": {"verdict": "not reproduced", "seconds": 3.0, "quick": True}}))
    out = publish(run, tmp_path / "pub", registry=["a", "b"])
    text = (out / "report.md").read_text()
    assert "![p](a/p.png)" in text and "not published" in text
    with Image.open(out / "a" / "p.png") as im:
        assert im.width == 900 and im.height == 135
    readme = (out / "README.md").read_text()
    assert "PARTIAL" in readme and "b" in readme.split("Not in this report")[1]
    with pytest.raises(FileNotFoundError, match="reproduce"):
        publish(tmp_path / "nothing", tmp_path / "pub2")


def test_publish_a_full_run_of_one_entry_to_its_own_folder(tmp_path):
    from experiments.publish_report import publish

    run = tmp_path / "run"
    run.mkdir()
    (run / "report.md").write_text('<a id="entry-a"></a>\n## A\n')
    (run / "metrics.json").write_text(json.dumps(
        {"a": {"verdict": "not reproduced", "seconds": 1744.0, "quick": False}}))
    out = publish(run, tmp_path / "full", registry=["a", "b"])
    readme = (out / "README.md").read_text()
    assert readme.startswith("# Published full run")
    assert "PARTIAL" not in readme and "Not in this report" not in readme
    assert "--only=a --publish --publish_dir=" in readme and "| full | 1744 |" in readme
    assert json.loads((out / "metrics.json").read_text())["a"]["quick"] is False
