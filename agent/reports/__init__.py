"""Diagnostic reports: facts by code, prose by a local LLM under a grammar, a guard."""
