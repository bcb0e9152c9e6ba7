"""What runs in workers and around them: callback ingest (dedupe, enqueue, the inbox) and the reconciliation sweep."""
