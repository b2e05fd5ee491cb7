"""The benchmark kit: generated task families (niah, oolong, pairs, codeqa), four methods on one model
(base, rlm-nosub, rlm, summary), sweeps that write resumable JSONL rows, tables and plots.

Data flows one way: cli -> runner (or ray_runner) -> methods -> RLM; families only generate and score.
"""

from .items import FAMILIES, BenchError, Item, family, parse_length

__all__ = ["FAMILIES", "BenchError", "Item", "family", "parse_length"]
