"""Test-only builders: tiny artifacts in the real key and folder layouts of released files."""
