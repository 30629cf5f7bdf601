"""The origin role: accepts publishes and holds each stream's claim in the registry."""
