"""``python -m experiments.tacs``: see ``experiments/tacs/main.py``."""

from absl import app

from experiments.tacs.main import main

if __name__ == "__main__":
    app.run(main)
