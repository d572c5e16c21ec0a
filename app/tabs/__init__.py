"""One module per tab; each has `build(ctx) -> TabHandle` that lays out its components and wires its events."""
