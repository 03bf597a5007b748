"""Small apps the CLI tests serve as `apps.<module>:<attribute>` or `apps/<file>.py:<attribute>`."""
