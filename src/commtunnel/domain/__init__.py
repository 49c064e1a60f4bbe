"""Pure domain models and rules: no I/O is imported anywhere in this package."""
