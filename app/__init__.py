"""selfinstruct service: HTTP API, settings, database, orchestration of runs and jobs, CLI."""
