"""`invoke bench replay` (side by side with a peer client) and `invoke bench replay-capacity`."""
