"""Seeing inside the service: JSON logs with request ids, Prometheus metrics, and the checks
of `python -m service doctor`."""
