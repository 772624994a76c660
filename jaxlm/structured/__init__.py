"""Structured generation: regex / JSON schema / choice constraints as token automata whose
tables live on device, applied per row inside ``jaxlm.core``'s jitted decode loop.

    from jaxlm.structured import JsonSchema, Regex, Choice, generate
"""

from jaxlm.structured.api import generate, processor_for, vocab_of
from jaxlm.structured.automaton import (TokenDFA, TokenVocab, compile_constraint,
                                        compile_regex, default_cache_dir)
from jaxlm.structured.constraints import (Choice, Constraint, ConstraintError, JsonSchema,
                                          Regex, as_constraint, check_schema,
                                          from_response_format, schema_from_type)
from jaxlm.structured.processor import StructuredProcessor, Tables, make_processor, stack_tables

__all__ = [
    "Choice", "Constraint", "ConstraintError", "JsonSchema", "Regex", "StructuredProcessor",
    "Tables", "TokenDFA", "TokenVocab", "as_constraint", "check_schema", "compile_constraint",
    "compile_regex", "default_cache_dir", "from_response_format", "generate", "make_processor",
    "processor_for",
    "schema_from_type", "stack_tables", "vocab_of",
]
