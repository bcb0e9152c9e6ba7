"""The domain: recordings, their callback events and status order, and what a worker does with one callback. No Flask, no RQ."""
