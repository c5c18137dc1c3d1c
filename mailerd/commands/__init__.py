"""The command-line commands that need more than a few lines, one module per noun."""
