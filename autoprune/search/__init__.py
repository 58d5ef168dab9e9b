"""The search: study files, search spaces, controllers, Pareto fronts and early stopping."""
