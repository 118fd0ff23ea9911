"""Rendering: alert groups → channel messages, with Jinja2 templates kept as files."""
