"""Traffic routing mechanics, backend-neutral: arm choice, sticky keys, shadows, rollout analysis."""
