"""The receiver's benchmark (issue 5): `python -m bench`, see `python -m bench --help`."""
