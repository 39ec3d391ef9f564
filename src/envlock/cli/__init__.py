"""The command line: thin typer commands over one composition root."""
