"""``python -m experiments.antiunify``: see ``experiments/antiunify/main.py``."""

from absl import app

from experiments.antiunify.main import main

if __name__ == "__main__":
    app.run(main)
