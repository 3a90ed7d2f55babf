"""vitviz: an interactive Vision Transformer attention explorer (library API)."""
