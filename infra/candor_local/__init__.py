"""Candor's local runtime: the template's stack on an AWS endpoint (embedded moto by default) and one
worker process per function, playing Lambda's event source mappings and Function URLs."""
