"""Reports and figures from run folders (pandas and matplotlib; no torch)."""
