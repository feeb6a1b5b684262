"""Showing runs: the HTML trace page and the drawing of objects shared with Tag."""
