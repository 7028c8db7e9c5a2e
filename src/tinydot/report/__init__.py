"""Figures (pure functions returning matplotlib Figures) and the HTML report."""
