"""Reading a run: results as a DataFrame, plots, export of a chosen trial."""
