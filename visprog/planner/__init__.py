"""The planner: natural language to a checked program."""
