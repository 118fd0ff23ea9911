"""Receivers and configs from notification-manager's custom resources: sources, view, selection."""
