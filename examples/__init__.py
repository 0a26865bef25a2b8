"""The example tasks: examples/drone/ is package data of edgeq (edgeq.shipped_examples, pyproject.toml): the
default --data and --test-data of `edgeq build`."""
