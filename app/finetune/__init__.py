"""Fine-tuning: OpenAI-compatible jobs (schemas, service), the worker protocol both kinds of
worker speak (protocol), training a claimed job (runner), the database worker (worker) and what
the worker routes do for a remote one (relay), the remote worker over HTTP (remote), and the
worker process `selfinstruct serve` supervises (supervisor).

Importing the package imports nothing else: the remote worker must load without the database.
"""
