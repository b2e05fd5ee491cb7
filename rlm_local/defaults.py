"""Every default of rlm-local in one table: the API (``RLM``), the CLI, the service and the bench kit read
their defaults from here, so changing one is one line.

Precedence, everywhere: an explicit argument, else the model card (models/*.toml: sampling, prompt budget,
window), else this table. Values follow the reference library (``rlms`` 0.1.3) where it has one.
"""

from __future__ import annotations

# ---- the loop's budgets ----------------------------------------------------------------------------------
MAX_ITERATIONS = 30  # root turns of one run (the reference's default); each child run gets its own
MAX_DEPTH = 1  # 1 = plain sub-calls only; 2+ lets rlm_query start child RLMs
OUTPUT_LIMIT = 20_000  # characters of cell output shown to the root per turn (the reference's 20K)
FINAL_GRACE_SECONDS = 1.0  # the closing final-answer request may run this long past max_timeout

# ---- sampling when no model card says otherwise ------------------------------------------------------------
ROOT_MAX_TOKENS = 2048  # a root turn's reply
SUB_MAX_TOKENS = 1024  # a sub-call's answer (a card's sampling.max_tokens wins, else 512 with a card)
CARD_SUB_MAX_TOKENS = 512  # a sub-call's answer for a model whose card gives no max_tokens
TEMPERATURE = 0.0  # greedy: reproducible runs and shared-prefix reuse

# ---- windows when the engine does not say -----------------------------------------------------------------
CONTEXT_LENGTH = 32_768  # tokens of a sub-model's window, for sizing chunks in the system prompt
MIN_PROMPT_TOKENS = 4_096  # the root's prompt budget is at least this (half the window, else CONTEXT_LENGTH)
TEMPLATE_OVERHEAD_TOKENS = 64  # a chat template's tokens around the prompt

# ---- the reference library's other options ----------------------------------------------------------------
COMPACTION_THRESHOLD_PCT = 0.85  # compaction summarises the root conversation at this share of its window
MAX_CONCURRENT_SUBCALLS = 4  # child RLMs of one rlm_query_batched running at once

# ---- entry points -------------------------------------------------------------------------------------------
BENCH_MAX_ITERATIONS = 8  # the bench kit: short runs keep a sweep's cost bounded (README Benchmarks)
