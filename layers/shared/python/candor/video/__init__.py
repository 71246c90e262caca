"""Stored video: probing and sampling frames (PyAV), and tracking the faces in them into persons."""
