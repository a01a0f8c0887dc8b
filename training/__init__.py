"""Fine-tune and evaluate a causal LM on a JSONL dataset; no database and no HTTP server."""
