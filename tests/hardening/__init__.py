"""Hardening: fuzzing, access, limits, crashes, faults, load."""
