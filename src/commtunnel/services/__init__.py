"""Use cases over the ports: send, read, auth, admin, dispatch."""
