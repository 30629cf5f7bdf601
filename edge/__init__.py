"""The edge role: one upstream pull per stream, fanned out to every local viewer."""
