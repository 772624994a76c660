"""The verdict rule (jaxlm.utils.report.judge) and the Section contract."""

import pytest

from jaxlm.utils.report import RULE, Claim, Verdict, judge


def _c(holds, measured=True, ci=True, own=True, circular=False, headline=True, text="c"):
    return Claim(text, measured=measured, ci_or_exact=ci, own_paper=own, circular=circular,
                 holds=holds, headline=headline)


def test_reproduced_needs_every_headline_part_measured_with_ci():
    assert judge([_c(True), _c(True, text="d")]).verdict is Verdict.REPRODUCED
    # one headline part without a CI: partial, and the reason names it
    r = judge([_c(True), _c(True, ci=False, text="speed 2x")])
    assert r.verdict is Verdict.PARTIAL
    assert "speed 2x" in r.why


def test_circular_agreement_is_simulated_only():
    r = judge([_c(True, circular=True, text="20x over the pipeline (cost model)")])
    assert r.verdict is Verdict.SIMULATED
    assert judge([_c(True, measured=False)]).verdict is Verdict.SIMULATED


def test_measured_failure_beats_simulated_success():
    # Atom: the cost model reproduces its own tables, every measured point loses
    r = judge([_c(True, circular=True, headline=False, text="tables"),
               _c(False, text="Atom beats the pipeline on slow links")])
    assert r.verdict is Verdict.NOT_REPRODUCED
    assert "Atom beats the pipeline" in r.why


def test_prior_paper_never_stands_in():
    r = judge([_c(True, own=False, text="BKLV pattern lgg"), _c(None, text="nullary")])
    assert r.verdict is Verdict.NOT_TESTABLE
    assert "BKLV" in r.why and "Not counted" in r.why
    with pytest.raises(ValueError, match="headline"):
        judge([_c(True, own=False)])


def test_partial_cases():
    # a headline part fails while another holds
    assert judge([_c(True), _c(False, text="d")]).verdict is Verdict.PARTIAL
    # headline holds with CI but a secondary claim of the paper fails
    assert judge([_c(True), _c(False, headline=False, text="d")]).verdict is Verdict.PARTIAL
    # headline untestable, a secondary claim measured and holding
    assert judge([_c(None), _c(True, headline=False, text="d")]).verdict is Verdict.PARTIAL
    # headline holds without CI only
    assert judge([_c(True, ci=False)]).verdict is Verdict.PARTIAL


def test_claim_validation_and_vocabulary():
    with pytest.raises(ValueError, match="one non-empty line"):
        Claim("a\nb", True, True, True, False, True)
    with pytest.raises(ValueError, match="bool"):
        Claim("a", True, True, True, False, holds=1)
    assert {v.value for v in Verdict} >= {"reproduced", "partially reproduced",
                                          "not reproduced", "not testable at this scale",
                                          "simulated only"}
    assert "simulated only" in RULE and "earlier paper" in RULE


def test_section_derives_the_verdict_and_refuses_a_free_text_one(tmp_path):
    from jaxlm.utils.report import Section, render_section

    kw = dict(title="T", claim="the paper says X", measured="we saw Y", setup="s", table=[],
              command="python -m experiments.reproduce --only=t")
    with pytest.raises(TypeError):
        Section(**kw, verdict="reproduced")
    with pytest.raises(ValueError, match="headline"):
        Section(**kw, claims=[])
    with pytest.raises(ValueError, match="one non-empty line"):
        Section(**{**kw, "claim": "two\nlines"}, claims=[_c(True)])
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "p.png").write_bytes(b"png")
    sec = Section(**kw, claims=[_c(False, text="X holds"),
                                _c(True, circular=True, headline=False, text="tables")],
                  plots=[str(tmp_path / "t" / "p.png"), "p.png"])
    assert sec.verdict is Verdict.NOT_REPRODUCED and "X holds" in sec.why
    md = render_section("t", sec, tmp_path)
    assert '<a id="entry-t"></a>' in md and md.count("](t/p.png)") == 2
    assert "**Verdict: not reproduced.**" in md and "simulated only" in md
    failed = Section.failed("t", RuntimeError("boom"), "cmd")
    assert failed.verdict is Verdict.NOT_RUN and "boom" in failed.why
