"""The node runtime: settings, node assembly and lifecycle, the node HTTP app, metrics, process running."""
