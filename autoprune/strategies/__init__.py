"""Strategies: how a run's candidates are scheduled through its stages (a targeted search
screens many and retrains few)."""
