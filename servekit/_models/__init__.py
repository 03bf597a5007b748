"""Models as versioned artifacts: the store (`store`), this node's cache (`cache`) and the
Python API users reach as `servekit.models` (`api`)."""
