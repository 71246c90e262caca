"""`candor`: the commands a user runs, and the reports they print."""
