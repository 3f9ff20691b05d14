"""The shared core: data model, launch context, caches, registry and plan, secrets, memos.

It imports nothing from `doctor`, `checks` or `runner`; they all build on it.
"""
