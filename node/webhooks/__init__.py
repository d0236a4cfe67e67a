"""Webhooks: room events delivered to backends over HTTP, signed, at least once.

`events.py` turns what the store recorded into Daily's webhook format and signs it (pure);
`delivery.py` takes recorded events from a `WebhookQueue` shared by the fleet and POSTs them.
"""
