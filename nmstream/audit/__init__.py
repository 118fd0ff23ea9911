"""Audit: the history of outcomes on ``nmstream-sent``, its webhook, replay and tap."""
