"""The shipped device profiles: this folder is package data of edgeq (edgeq.shipped_profiles, pyproject.toml)."""
