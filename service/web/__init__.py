"""The web edge: blueprints, request schemas, auth and JSON errors."""
