"""What a run did: typed events (``events``), the JSONL trajectory (``trajectory``), usage accounting
(``usage``) and the live display on stderr (``display``)."""
