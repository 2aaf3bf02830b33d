"""One module per CLI command; specllm.cli wires them into the app."""
