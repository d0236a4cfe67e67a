"""The Python client SDK: `CallClient` (daily-js's call object, in Python naming) and
`RestClient` (the REST API). The browser SDK's files are in browser/."""

from roomstate.sdk.client import CallClient, RestClient

__all__ = ["CallClient", "RestClient"]
