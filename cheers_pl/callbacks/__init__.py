"""Lightning callbacks that own metrics, sample grids and EMA (STYLE.md R10)."""
