"""Layer 1, spec: pure data describing deployments and application graphs. No I/O."""
