"""trainyard's client side: the Python SDK (`from trainyard import Client`) and the
`trainyard` command. It needs httpx, pydantic and rich only (`pip install .`, no extras)."""

from trainyard.client import ApiError, Client, api_defaults

__all__ = ["ApiError", "Client", "api_defaults"]
