"""Contracts shared by the API, the workers and the SDK. Never imports torch."""
