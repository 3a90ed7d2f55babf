"""What goes out: maps rendered as pictures, exports with their settings, weights provenance."""
