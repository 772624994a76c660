"""Agent loops on top of ``jaxlm.llm`` backends. Submodules are imported on demand
(``jaxlm.agents.textworld_env``, ``jaxlm.agents.tips``, ...); this package imports nothing heavy."""
