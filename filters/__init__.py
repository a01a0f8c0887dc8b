"""Novelty index, heuristics and instance filters; no database, no HTTP, no LLM."""
