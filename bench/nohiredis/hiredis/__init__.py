# Put first on PYTHONPATH to hide the real hiredis (redis-py then uses its pure-Python parser).
raise ImportError("hiredis hidden by bench/nohiredis")
