"""Jobs for the worker benchmark."""


def noop(payload=None) -> str:
    return "ok"
