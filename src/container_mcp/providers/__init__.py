"""Backends. ``create_provider`` in ``registry`` is the one place that names them."""
