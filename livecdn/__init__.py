"""The command line: `livecdn origin|edge|control|up`. The top layer, the only one that imports the roles."""
