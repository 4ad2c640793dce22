"""One module per CLI command (or command group); registered in tinyhost.cli."""
