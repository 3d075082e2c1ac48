"""The synthetic world: procedurally generated scenes with per-pixel concept labels, small
targets with planted units, and exporters to the real data formats (DESIGN section 6)."""
