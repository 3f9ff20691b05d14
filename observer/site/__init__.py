"""The folder put on a child's PYTHONPATH: it holds only the observer's sitecustomize (this file makes it install as package data)."""
