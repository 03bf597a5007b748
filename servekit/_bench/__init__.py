"""`servekit bench`'s engine: load from keep-alive connections in worker processes (`load`,
`workers`), the open-loop schedule (`schedule`), latency histograms (`histogram`), request bodies
(`payload`), and the results (`report`, `plot`). It knows HTTP, not servekit's internals."""
