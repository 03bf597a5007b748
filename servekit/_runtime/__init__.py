"""Layer 3, runtimes: where replicas run (in-process today), behind one interface."""
