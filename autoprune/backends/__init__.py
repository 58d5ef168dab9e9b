"""Backends run a session's trials: ``local`` in this process, ``ray`` through Ray Tune."""
