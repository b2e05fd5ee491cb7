"""Model cards: one TOML file per known model, shipped inside the package as ``rlm_local.model_cards``."""
