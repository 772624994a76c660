"""``python -m experiments.meanfield_icl``: see ``experiments/meanfield_icl/main.py``."""

from absl import app

from experiments.meanfield_icl.main import main

if __name__ == "__main__":
    app.run(main)
