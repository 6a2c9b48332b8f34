"""Engines as data (engines/*.toml) plus a small adapter each: how an engine is obtained, started,
told a knob's intent, read for metrics, and which OpenAI-contract extensions it declares."""
