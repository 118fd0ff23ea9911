"""Delivery: one module per channel behind the :class:`~nmstream.channels.base.Notifier`."""
