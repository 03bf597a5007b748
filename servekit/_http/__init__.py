"""Layer 4, HTTP edge: the Starlette ingress, request binding, responses, OpenAPI, the server."""
