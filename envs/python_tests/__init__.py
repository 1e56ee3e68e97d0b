"""PythonTests: implement a function from a spec, graded by hidden tests (see env.py)."""
