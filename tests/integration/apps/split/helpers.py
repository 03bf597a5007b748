"""The helper only `Greeter` uses; the `--reload` tests rewrite it (copied to a temporary folder)."""

GREETING = "hello"


def greet(name: str) -> str:
    return f"{GREETING} {name}"


def check() -> None:
    """Called by `Greeter`'s constructor: a test makes it raise to fail a rollout."""
