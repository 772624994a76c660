"""``python -m experiments.mamba_nd``: see ``experiments/mamba_nd/main.py``."""

from absl import app

from experiments.mamba_nd.main import main

if __name__ == "__main__":
    app.run(main)
