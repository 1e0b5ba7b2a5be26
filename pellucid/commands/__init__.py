"""One module per group of CLI commands: each parses nothing, calls the library, prints."""
