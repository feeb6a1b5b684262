"""Running checked programs: plugins, runtime and model loading, the interpreter, its events and the trace."""
