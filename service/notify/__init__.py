"""Outbound notifications: signed Standard Webhooks messages to the team's own endpoints."""
