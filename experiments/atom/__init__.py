"""Atom paper package: the swap/overlap measurement harness (``measure``, behind
``python -m experiments.bench_offload``) and the swap-step timeline figure (``plots``).
Entrypoints stay top-level: ``experiments.atom_train``, ``experiments.atom_netns``,
``experiments.bench_offload`` and the ``atom`` reproduction entry. Mechanisms (planner,
swap executor, peers, pipeline, network model) live in ``jaxlm.offload``. Importing this
package defines no flags.
"""
