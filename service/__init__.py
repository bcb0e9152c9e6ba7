"""Recording keeper: start SignalWire recordings, receive their callbacks, keep their metadata."""
