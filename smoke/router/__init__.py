"""The router in front of a profile's pools: nginx, configured from a template (see nginx.py)."""
