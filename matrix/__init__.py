"""What to validate: the matrix spec, its cells, the results store, CI export and notes."""
