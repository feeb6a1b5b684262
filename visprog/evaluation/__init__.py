"""Dataset evaluation: data formats, answer scoring, records, summary, runner and engines."""
