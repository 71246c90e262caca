"""Candor's shared package: what a face is, the rules the pipeline follows, and the adapters it runs on.

Nothing in the top-level modules imports boto3; AWS lives in `candor.adapters.aws`.
"""
