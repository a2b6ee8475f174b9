"""Stage 2, the plan: hardware profiles, model geometry and tensor inventory (`ModelSpec`),
the memory model, the fit, the command that serves the artifact, the Hermes family table, and
what a convert is asked to make (`Target`).

Takes a `SourceModel` (or a config) and a profile; returns a `Plan`. Pure arithmetic over
headers and tables: it reads no weights and imports no heavy library."""
