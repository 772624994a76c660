"""Knowledge editing: ROME, MEMIT, fine-tuning and retrieval baselines, edit metrics."""
