"""Configs of the paper's runs on real models and data (see docs/paper_configs.md)."""
