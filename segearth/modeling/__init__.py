"""SegEarth-R1 components, one module per box of the architecture figure."""
