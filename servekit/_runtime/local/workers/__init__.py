"""Process replicas: worker processes, the wire protocol between them and the server."""
