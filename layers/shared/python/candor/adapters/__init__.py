"""Adapters for the ports in candor.ports: AWS (S3, DynamoDB, SQS) and in-memory."""
