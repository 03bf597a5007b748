"""The `servekit` command line."""
