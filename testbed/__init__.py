"""What tests and benchmarks both run the service with, so neither imports the other's modules.

    scripted_llm.py  the one scripted OpenAI-compatible model server (faults on demand, and
                     plausible answers to every prompt kind of the pipeline)
    live.py          `selfinstruct serve` in a child process, on a free port
    postgres.py      a throwaway PostgreSQL cluster on loopback, from Debian's packages
    load.py          concurrent clients reading and exporting from a live API
    corpus.py        real English sentences from the installed packages' documentation

It imports the project and nothing of tests/ or bench/ (scripts/check_layers.py holds that); it
is not part of the installed package.
"""
