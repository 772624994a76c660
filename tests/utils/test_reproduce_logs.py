"""reproduce's console stays quiet (warnings only) while each entry's INFO goes to its log."""

import io
import logging as py_logging
import warnings

import pytest
from absl import logging

from experiments import reproduce


@pytest.fixture
def quiet_state():
    handler = logging.get_absl_handler()
    level, filters, verbosity = handler.level, list(handler.filters), logging.get_verbosity()
    noisy = {n: py_logging.getLogger(n).level for n in reproduce._NOISY}
    root = py_logging.getLogger().level
    installed = handler not in py_logging.getLogger().handlers
    if installed:  # as under absl.app.run (the suite's console handler)
        py_logging.getLogger().addHandler(handler)
    stream, handler.python_handler.stream = handler.python_handler.stream, io.StringIO()
    yield handler.python_handler.stream
    handler.python_handler.stream = stream
    if installed:
        py_logging.getLogger().removeHandler(handler)
    py_logging.getLogger().setLevel(root)
    handler.setLevel(level)
    handler.filters[:] = filters
    logging.set_verbosity(verbosity)
    for n, lv in noisy.items():
        py_logging.getLogger(n).setLevel(lv)
    py_logging.captureWarnings(False)


def test_entry_log_gets_info_console_gets_warnings_only(tmp_path, quiet_state):
    from rouge_score import rouge_scorer

    reproduce._quiet_logs()
    log = tmp_path / "log.txt"
    with reproduce._entry_log(log):
        rouge_scorer.RougeScorer(["rougeL"])  # logs "Using default tokenizer." at INFO
        logging.info("entry progress %d", 7)
        py_logging.getLogger("some.library").info("library detail")
        logging.warning("entry warning")
        warnings.warn("a python warning", UserWarning)
    logging.info("after the entry")
    text = log.read_text()
    err = quiet_state.getvalue()  # the console
    assert "entry progress 7" in text and "library detail" in text
    assert "entry warning" in text and "a python warning" in text
    assert "Using default tokenizer" not in text and "Using default tokenizer" not in err
    assert "entry progress" not in err and "library detail" not in err
    assert "entry warning" in err and "a python warning" in err
    assert "after the entry" not in text  # the handler is removed when the entry ends
    assert not any(isinstance(h, py_logging.FileHandler) and h.baseFilename == str(log)
                   for h in py_logging.getLogger().handlers)
