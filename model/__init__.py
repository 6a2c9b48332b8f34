"""The model: spec → frozen Cells, stage outcomes, the results store, errors, settings, TOML reading."""
