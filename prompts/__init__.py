"""Planner prompts as data, installed as ``visprog.prompts``: one TOML file per task."""
