"""SignalWire: the Compatibility REST client and the callback signature scheme."""
