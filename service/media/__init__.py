"""The media archive: each completed recording's audio, copied to the team's own storage,
verified, and deleted at SignalWire only once a verified copy exists.

archive.py (the domain: download, stream, verify, delete), pipeline.py (archive jobs: enqueue
and retry policy), storage/ (where copies go: a small interface, a backend per URL scheme).
"""

# A recording's media, once it is queued for archiving: pending (queued, or being retried),
# archived (a verified copy exists), failed (the last attempt failed and no retry is left).
MEDIA_STATUSES = ("pending", "archived", "failed")
