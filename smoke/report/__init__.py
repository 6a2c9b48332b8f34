"""One output module per format: json.py (summary), markdown.py (tables), png.py (charts)."""
