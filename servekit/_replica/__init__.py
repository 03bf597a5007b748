"""Layer 2, replica mechanics: batching, the user-code runner and replica context. Backend-neutral."""
