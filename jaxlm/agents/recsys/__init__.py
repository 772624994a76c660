"""In-context sequential recommendation (LLMSRec-Syn) with classic baselines."""

from jaxlm.agents.recsys.data import (
    DataFormatError, RecData, Split, SynthConfig, SyntheticWorld, generate_synthetic,
    leave_one_out, load_ml1m, load_recbole, make_candidates, scramble_titles, write_ml1m)
from jaxlm.agents.recsys.metrics import (
    ItemKNN, Markov, Oracle, Popularity, random_floor, rank_metrics)
from jaxlm.agents.recsys.prompting import (
    STRATEGIES, DemoPool, PromptConfig, answer_format, build_prompt, parse_ranking,
    rank_by_generation, score_candidates)

__all__ = [
    "STRATEGIES", "DataFormatError", "DemoPool", "ItemKNN", "Markov", "Oracle", "Popularity",
    "PromptConfig", "RecData", "Split", "SynthConfig", "SyntheticWorld", "answer_format",
    "build_prompt",
    "generate_synthetic", "leave_one_out", "load_ml1m", "load_recbole", "make_candidates",
    "parse_ranking", "random_floor", "rank_by_generation", "rank_metrics", "scramble_titles",
    "score_candidates", "write_ml1m",
]
