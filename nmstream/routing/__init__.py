"""Routing: alerts → the receivers that get them → groups ready to render."""
